"""Models the tests export, built small and saved once per session.

Custom classes are registered with Keras here, so `--import support.shipyard_test_models` makes
them loadable (support.processes.subprocess_env puts tests/ on child processes' PYTHONPATH).
Importing this module imports TensorFlow: unit tests do not.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shipyard.demo.model import COLORS, build_demo_model


@keras.saving.register_keras_serializable(package="shipyard_tests")
class Embedder(keras.Model):
    """A subclassed model with a custom method (`embed`) and dropout active in training."""

    def __init__(self, units: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.dropout = keras.layers.Dropout(0.5, seed=7)
        self.head = keras.layers.Dense(1)

    def embed(self, features):
        return self.hidden(features)

    def call(self, features, training=False):
        return self.head(self.dropout(self.hidden(features), training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="shipyard_tests")
class Noisy(keras.layers.Layer):
    """Adds unseeded noise at inference: an export of it cannot answer like the original."""

    def call(self, x):
        return x + tf.random.uniform(tf.shape(x))


@keras.saving.register_keras_serializable(package="shipyard_tests")
class Nested(keras.Model):
    """Returns a dict holding a list: no serving signature can carry that."""

    def call(self, x):
        return {"pair": [x, x]}


@keras.saving.register_keras_serializable(package="shipyard_tests")
class WebPBrightness(keras.layers.Layer):
    """Mean brightness of WebP images given as encoded bytes, 0 for anything else.

    tf.io.decode_webp (op DecodeWebP) is new in TensorFlow 2.20: an export of this model loads
    with the project's TensorFlow but not on TF Serving 2.19's.
    """

    def call(self, images):
        def brightness(encoded):
            return tf.cond(tf.strings.substr(encoded, 0, 4) == "RIFF",
                           lambda: tf.reduce_mean(tf.cast(tf.io.decode_webp(encoded), "float32")),
                           lambda: tf.constant(0.0))

        return tf.map_fn(brightness, images, fn_output_signature=tf.float32)


class ModelFactory:
    def __init__(self, directory: Path):
        self.directory = directory
        self._cache: dict[str, Path] = {}

    def path(self, kind: str) -> Path:
        if kind not in self._cache:
            model = getattr(self, f"_{kind}")()
            target = self.directory / f"{kind}.keras"
            model.save(target)
            self._cache[kind] = target
        return self._cache[kind]

    def saved_model(self, kind: str = "sequential") -> Path:
        """A SavedModel directory written with plain `model.export()` (endpoint `serve`)."""
        target = self.directory / f"{kind}_saved_model"
        if not target.exists():
            keras.saving.load_model(self.path(kind)).export(str(target), verbose=False)
        return target

    @staticmethod
    def _sequential() -> keras.Model:
        keras.utils.set_random_seed(1)
        # The input's name is explicit: Keras numbers default names per process
        # (input_layer_5 after other models), and SavedModel sources' signatures carry it.
        model = keras.Sequential([keras.Input((3,), name="input_layer"),
                                  keras.layers.Dense(4, activation="relu"),
                                  keras.layers.Dense(2, name="logits")])
        return model

    @staticmethod
    def _sequential_tanh() -> keras.Model:
        """The same weights as _sequential (same seed, same shapes), another activation."""
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                                 keras.layers.Dense(2, name="logits")])

    @staticmethod
    def _labeler() -> keras.Model:
        """Class ids in, a string label (inverse StringLookup) and a float score out."""
        keras.utils.set_random_seed(5)
        ids = keras.Input((1,), dtype="int64", name="ids")
        label = keras.layers.StringLookup(vocabulary=COLORS, invert=True, name="label")(ids)
        score = keras.layers.Dense(1, name="score")(keras.layers.Flatten()(
            keras.layers.Embedding(10, 2)(ids)))
        return keras.Model({"ids": ids}, {"label": label, "score": score})

    @staticmethod
    def _nested() -> keras.Model:
        model = Nested()
        model(np.zeros((1, 3), "float32"))
        return model

    @staticmethod
    def _sequential_wide() -> keras.Model:
        keras.utils.set_random_seed(2)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="logits")])

    @staticmethod
    def _functional() -> keras.Model:
        """The demo's model: dict inputs (strings through a StringLookup), two named outputs,
        compiled and trained once so that the optimizer has state."""
        keras.utils.set_random_seed(3)
        model = build_demo_model()
        rng = np.random.default_rng(0)
        features = rng.standard_normal((64, 3)).astype("float32")
        ids = rng.integers(0, 3, 64)
        colors = tf.constant([[COLORS[i]] for i in ids])
        model.fit({"x1": features, "color": colors},
                  {"score": features.sum(1, keepdims=True), "probs": ids},
                  epochs=1, batch_size=16, verbose=0)
        return model

    @staticmethod
    def _subclassed() -> keras.Model:
        keras.utils.set_random_seed(4)
        model = Embedder()
        model(np.zeros((1, 3), "float32"))
        return model

    @staticmethod
    def _noisy() -> keras.Model:
        return keras.Sequential([keras.Input((3,)), Noisy(), keras.layers.Dense(1, name="out")])

    @staticmethod
    def _nan() -> keras.Model:
        """Answers NaN for every input: a broken model (e.g. a diverged training run)."""
        model = ModelFactory._sequential()
        kernel, bias = model.layers[-1].get_weights()
        model.layers[-1].set_weights([np.full_like(kernel, np.nan), bias])
        return model

    @staticmethod
    def _dropout() -> keras.Model:
        """An unseeded Dropout: its SeedGenerator draws its state from Python's `random` when
        the model is built or loaded, so each process exporting it holds another state. Every
        name is explicit: Keras numbers default names per process (sequential_1, ...)."""
        keras.utils.set_random_seed(6)
        return keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, name="hidden"),
                                 keras.layers.Dropout(0.5, name="dropout"),
                                 keras.layers.Dense(1, name="out")], name="dropout_model")

    @staticmethod
    def _webp() -> keras.Model:
        images = keras.Input((), dtype="string", name="images")
        return keras.Model({"images": images},
                           {"brightness": WebPBrightness(name="brightness")(images)})

    @staticmethod
    def _lambda() -> keras.Model:
        return keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2.0)])
