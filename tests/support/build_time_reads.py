"""Custom layers that read their own variables while Keras builds them, as layers that cache
a derived constant do. Keras's own `load_model` gives them their initializer's value there;
an optimized load must give the same answers, or step aside.

Registered with Keras here, so the exporting process and the independent reference's process
(which imports the modules of registered classes) both know them.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="shipyard_build_reads")
class ReadsInBuild(keras.layers.Layer):
    """Reads its weight eagerly in build (keras.ops on the variable, then numpy)."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")
        self.init_sum = float(keras.ops.convert_to_numpy(keras.ops.sum(self.w)))

    def call(self, x):
        return x * self.w + self.init_sum


@keras.saving.register_keras_serializable(package="shipyard_build_reads")
class ReadsInFunction(keras.layers.Layer):
    """Reads its weight in build inside a tf.function: the read happens in TensorFlow's
    kernel, which no Python method of the variable sees."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],),
                                 initializer=keras.initializers.Constant(2.0), name="w")
        self.init_sum = float(tf.function(lambda: tf.reduce_sum(self.w.value))())

    def call(self, x):
        return x * self.w + self.init_sum


@keras.saving.register_keras_serializable(package="shipyard_build_reads")
class NanUnlessInitialized(keras.layers.Layer):
    """Checks in build, inside a tf.function, that its weight holds its initializer's value,
    and answers NaN if not: NaN from any load that leaves the variable unfilled there, while
    Keras's own load answers finite values."""

    INITIAL = 0.7071

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],),
                                 initializer=keras.initializers.Constant(self.INITIAL), name="w")
        filled = tf.function(lambda: tf.reduce_all(tf.equal(self.w.value, self.INITIAL)))()
        self.offset = 1.0 if bool(filled) else float("nan")

    def call(self, x):
        return x * self.w + self.offset


def saved_model_with(layer: keras.layers.Layer, path, trained_weight: float = 3.0):
    """A functional model around `layer` whose weight is then set to `trained_weight` (as
    training would), saved as `path`."""
    import numpy as np

    inputs = keras.Input((3,))
    model = keras.Model(inputs, layer(inputs))
    layer.w.assign(np.full((3,), trained_weight, np.float32))
    model.save(path)
    return path
