"""TF Hub's own example of a reusable SavedModel, as its guide writes it ("SavedModels from TF
Hub in TensorFlow 2", saving from low-level TensorFlow): an object with `__call__` and one
variable, v = 2, and the regularization loss 0.001 * v**2.

With `hub.KerasLayer(path, trainable=True)` it answers [20., 40.] for [10., 20.], has one
trainable weight, and its losses are [0.004]. Imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

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
