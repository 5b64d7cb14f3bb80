"""The demo's model: dict inputs with a StringLookup, two named outputs, trained briefly."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

COLORS = ["red", "green", "blue"]


def build_demo_model() -> keras.Model:
    # Every layer is named: Keras numbers unnamed layers per process (dense, dense_1, ...), and
    # a second model built in the same process would otherwise differ in its config.
    x1 = keras.Input((3,), name="x1")
    color = keras.Input((1,), dtype="string", name="color")
    one_hot = keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot",
                                        name="color_lookup")(color)
    hidden = keras.layers.Concatenate(name="features")(
        [x1, keras.layers.Flatten(name="color_one_hot")(one_hot)])
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model({"x1": x1, "color": color}, {"score": score, "probs": probs},
                        name="demo_model")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01, name="adam"),
                  loss={"score": "mse", "probs": "sparse_categorical_crossentropy"})
    return model


def train_demo_model(path: Path, *, seed: int = 0, samples: int = 512,
                     epochs: int = 10) -> Path:
    """Trains on `samples` examples drawn with `seed`, from weights drawn with `seed`: the
    same seed gives the same weights here, so a re-run exports the same content. Different
    seeds give models that agree on the color class (what `probs` learns) but not exactly on
    `score`: what a retrained challenger looks like."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((samples, 3)).astype("float32")
    color_ids = rng.integers(0, len(COLORS), size=samples)
    # Keras' numpy adapter rejects string arrays; a tf.Tensor of strings is accepted.
    color = tf.constant([[COLORS[i]] for i in color_ids])
    targets = {"score": x1.sum(axis=1, keepdims=True), "probs": color_ids}
    model = build_demo_model()
    model.fit({"x1": x1, "color": color}, targets, epochs=epochs, batch_size=32, verbose=0,
              shuffle=False)
    model.save(path)
    return path


def sample_examples(count: int, *, seed: int = 1000) -> list[dict[str, list]]:
    """Examples shaped like the training data, as JSON-ready dicts (the offline canary's
    sample traffic)."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((count, 3)).astype("float32")
    colors = rng.integers(0, len(COLORS), size=count)
    return [{"x1": [float(v) for v in row], "color": [COLORS[c]]}
            for row, c in zip(x1, colors)]
