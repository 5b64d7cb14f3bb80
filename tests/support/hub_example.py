"""TF Hub's own example of a reusable SavedModel, as its guide writes it ("SavedModels from TF
Hub in TensorFlow 2", saving from low-level TensorFlow): an object with `__call__` and one
variable, v = 2, and the regularization loss 0.001 * v**2.

With `hub.KerasLayer(path, trainable=True)` it answers [20., 40.] for [10., 20.], has one
trainable weight, and its losses are [0.004]. Imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

GUIDE_INPUT = [10.0, 20.0]
GUIDE_OUTPUT = [20.0, 40.0]
GUIDE_LOSSES = [0.004]


def save_hub_example(path: Path, v_init: float = 2.0) -> Path:
    """Saves the guide's MyMulModel(v_init) with tf.saved_model.save; returns `path`."""
    import tensorflow as tf

    class MyMulModel(tf.train.Checkpoint):
        def __init__(self, v_init):
            super().__init__()
            self.v = tf.Variable(v_init)
            self.variables = [self.v]
            self.trainable_variables = [self.v]
            self.regularization_losses = [
                tf.function(input_signature=[])(lambda: 0.001 * self.v**2),
            ]

        @tf.function(input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)])
        def __call__(self, inputs):
            return tf.multiply(inputs, self.v)

    tf.saved_model.save(MyMulModel(v_init), str(path))
    return Path(path)


# TF Hub's client as a user runs it, independent of shipyard's own check (reusable_check.py):
# the answer for training=False and True, the trainable weights, the losses, one SGD step.
HUB_CLIENT = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

path, x = sys.argv[1], tf.constant(json.loads(sys.argv[2]), tf.float32)
layer = hub.KerasLayer(path, trainable=True)
inference = layer(x, training=False)
training = layer(x, training=True)
losses = [float(loss) for loss in layer.losses]  # before the step moves the weights
before = [w.numpy().copy() for w in layer.trainable_weights]
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(x, training=True) + 1.0)) + tf.add_n(layer.losses)
grads = tape.gradient(loss, layer.trainable_weights)
tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, layer.trainable_weights))
print(json.dumps({
    "tf_keras_layer": isinstance(layer, tf_keras.layers.Layer), "inference": inference.numpy().tolist(),
    "training_differs": bool(not np.allclose(training.numpy(), inference.numpy())),
    "trainable_weights": len(layer.trainable_weights),
    "losses": losses,
    "changed": [bool(not np.array_equal(b, w.numpy()))
                for b, w in zip(before, layer.trainable_weights)]}))
"""


def hub_client(version_dir: Path, x) -> dict:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", HUB_CLIENT, str(version_dir),
                           json.dumps(np.asarray(x).tolist())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
