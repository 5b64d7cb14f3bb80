"""The demo's model: dict inputs with a StringLookup, two named outputs, trained briefly."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

COLORS = ["red", "green", "blue"]


def build_demo_model() -> keras.Model:
    x1 = keras.Input((3,), name="x1")
    color = keras.Input((1,), dtype="string", name="color")
    one_hot = keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot")(color)
    hidden = keras.layers.Concatenate()([x1, keras.layers.Flatten()(one_hot)])
    hidden = keras.layers.Dense(16, activation="relu")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model({"x1": x1, "color": color}, {"score": score, "probs": probs})
    model.compile(optimizer="adam",
                  loss={"score": "mse", "probs": "sparse_categorical_crossentropy"})
    return model


def train_demo_model(path: Path, *, samples: int = 256, epochs: int = 2) -> Path:
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((samples, 3)).astype("float32")
    color_ids = rng.integers(0, len(COLORS), size=samples)
    # Keras' numpy adapter rejects string arrays; a tf.Tensor of strings is accepted.
    color = tf.constant([[COLORS[i]] for i in color_ids])
    targets = {"score": x1.sum(axis=1, keepdims=True), "probs": color_ids}
    model = build_demo_model()
    model.fit({"x1": x1, "color": color}, targets, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path
