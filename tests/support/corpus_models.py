"""The models of the corpus (support/corpus.py, integration/test_model_corpus.py): tiny Keras
models of many shapes, and the custom classes they use.

Two sides use this module:
- the test process builds and saves every model (`save_corpus`), exports each with shipyard and
  calls the exported versions;
- one separate process (`python -m support.corpus_models JOB`) loads every saved `.keras` file
  with Keras's own `keras.saving.load_model`, plain, and writes its outputs on the same inputs.
  That process imports no shipyard code (it reports what it imported), so its answers share no
  code path with shipyard's loading.

Custom classes are registered with Keras here, so `imports=("support.corpus_models",)` makes
them loadable. This module imports TensorFlow and Keras, never shipyard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from support.corpus import CASES, CODES, TEXTS, Case

MODULE = "support.corpus_models"
PACKAGE = "shipyard_corpus"
# What the reference calls a model's output when the model returns one tensor, not a dict
# (the export names it after the output layer).
SINGLE = "<single>"


# ---------------------------------------------------------------------------------------------
# Custom layers that read their own state while they are built. Keras's load builds them (each
# variable holding its initializer's value), then assigns the saved values: the cached constant
# comes from the initializer, the variable from the file. The models save values that differ
# from the initializer's, so an answer tells both apart.


@keras.saving.register_keras_serializable(package=PACKAGE)
class BuildReadOps(keras.layers.Layer):
    """Reads its weight in `build` through keras.ops (the case of project issue 22)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")
        self.init_sum = float(ops.convert_to_numpy(ops.sum(self.w)))

    def call(self, x):
        return x * self.w + self.init_sum


@keras.saving.register_keras_serializable(package=PACKAGE)
class BuildReadNumpy(keras.layers.Layer):
    """Reads its weight in `build` through the variable's numpy(); a constant initializer."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), name="w",
                                 initializer=keras.initializers.Constant(0.75))
        self.init_mean = float(np.mean(self.w.numpy()))

    def call(self, x):
        return x * self.w - self.init_mean


@keras.saving.register_keras_serializable(package=PACKAGE)
class BuildReadTfVariable(keras.layers.Layer):
    """Reads the tf.Variable behind its weight in `build`; a seeded RandomNormal initializer
    (the same values in every process)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), name="w",
                                 initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=11))
        self.init_norm = float(tf.norm(self.w.value).numpy())

    def call(self, x):
        return x * self.w + self.init_norm


@keras.saving.register_keras_serializable(package=PACKAGE)
class BuildReadNonTrainable(keras.layers.Layer):
    """Reads a non-trainable variable in `build` (a cached offset)."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), trainable=False, name="offset",
                                      initializer=keras.initializers.Constant(2.5))
        self.init_max = float(ops.convert_to_numpy(ops.max(self.offset)))

    def call(self, x):
        return (x + self.offset) * self.init_max


# ---------------------------------------------------------------------------------------------
# Custom layers with non-trainable state.


@keras.saving.register_keras_serializable(package=PACKAGE)
class RunningCenter(keras.layers.Layer):
    """Learns, in training only, the running mean of its inputs and how many batches it saw
    (non-trainable float and int32 variables); subtracts the mean at inference."""

    def __init__(self, momentum: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, input_shape):
        self.mean = self.add_weight(shape=(input_shape[-1],), initializer="zeros",
                                    trainable=False, name="mean")
        self.batches = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                       trainable=False, name="batches")

    def call(self, x, training=False):
        if training:
            batch_mean = ops.mean(x, axis=0)
            self.mean.assign(self.momentum * self.mean + (1.0 - self.momentum) * batch_mean)
            self.batches.assign(self.batches + 1)
        return (x - self.mean) * ops.cast(self.batches, x.dtype)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TableScale(keras.layers.Layer):
    """Non-trainable state that is not a variable: a numpy table saved and loaded through
    Keras's save_own_variables / load_own_variables, used as a constant in `call`."""

    def __init__(self, size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.table = np.ones((size,), "float32")

    def call(self, x):
        return x * ops.convert_to_tensor(self.table)

    def save_own_variables(self, store):
        store["table"] = self.table

    def load_own_variables(self, store):
        self.table = np.asarray(store["table"], "float32")

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Int8Weight(keras.layers.Layer):
    """An int8 weight (non-trainable), dequantized with a float scale in `call`."""

    def build(self, input_shape):
        self.q = self.add_weight(shape=(input_shape[-1], 2), dtype="int8", trainable=False,
                                 initializer="zeros", name="q")
        self.scale = self.add_weight(shape=(2,), initializer="ones", name="scale")

    def call(self, x):
        return ops.matmul(x, ops.cast(self.q, x.dtype)) * self.scale


@keras.saving.register_keras_serializable(package=PACKAGE)
class Bfloat16Weight(keras.layers.Layer):
    """A float32 layer holding one bfloat16 variable, cast up in `call`."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), dtype="bfloat16", name="w",
                                 initializer="ones")

    def call(self, x):
        return x * ops.cast(self.w, x.dtype)


# ---------------------------------------------------------------------------------------------
# A subclassed model holding sub-models.


def _tower(units: int) -> keras.Model:
    """A functional model nesting a Sequential, with a residual connection."""
    x = keras.Input((3,))
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(3)], name="inner_sequential")
    return keras.Model(x, keras.layers.Add()([inner(x), x]), name="tower")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TwoTower(keras.Model):
    """Takes a dict, returns one: one functional sub-model and one Dense shared by both
    towers, LayerNormalization."""

    def __init__(self, units: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.tower = _tower(units)
        self.shared = keras.layers.Dense(units, activation="tanh")
        self.norm = keras.layers.LayerNormalization()
        self.score = keras.layers.Dense(1)

    def call(self, inputs):
        left = self.shared(self.tower(inputs["left"]))
        right = self.shared(self.tower(inputs["right"]))
        return {"similarity": ops.sum(left * right, axis=-1, keepdims=True),
                "score": self.score(self.norm(left - right))}

    def get_config(self):
        return {**super().get_config(), "units": self.units}


# ---------------------------------------------------------------------------------------------
# The builders, one per case of support/corpus.py. Every name is explicit where Keras would
# number it per process.


def _seeded(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def _data(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _reassign(layer: keras.layers.Layer, **values: Any) -> None:
    """Gives variables values other than their initializer's: what a build-time read must not
    see, and what the saved model holds."""
    for name, value in values.items():
        variable = getattr(layer, name)
        variable.assign(np.asarray(value, dtype=variable.dtype))


def _build_read(*layers: tuple[str, type, str, list[float]]) -> Callable[[], Any]:
    """A model with one branch per (output, layer class, its variable, the value saved),
    returning a list."""

    def build() -> keras.Model:
        _seeded(21)
        x = keras.Input((3,), name="x")
        outputs, assigned = [], []
        for output, layer_class, attribute, value in layers:
            custom = layer_class(name=f"{output}_layer")
            outputs.append(keras.layers.Dense(2, name=output)(custom(x)))
            assigned.append((custom, attribute, value))
        model = keras.Model(x, outputs)  # a list: the export names them by output_names
        for custom, attribute, value in assigned:
            _reassign(custom, **{attribute: value})
        return model

    return build


def _trained_state() -> keras.Model:
    _seeded(22)
    x = keras.Input((3,), name="x")
    ids = keras.Input((4,), dtype="int32", name="ids")
    hidden = TableScale(3, name="table")(RunningCenter(name="center")(x))
    hidden = keras.layers.BatchNormalization(momentum=0.5, name="bn")(
        keras.layers.Dense(4, name="hidden")(hidden))
    hidden = keras.layers.Dropout(0.3, name="unseeded")(
        keras.layers.Dropout(0.5, seed=3, name="seeded")(hidden))
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(12, 3, name="embedding")(ids))
    merged = keras.layers.Concatenate()([hidden, pooled])
    model = keras.Model({"x": x, "ids": ids}, keras.layers.Dense(2, name="out")(merged))
    model.get_layer("table").table = np.array([0.5, -1.5, 2.0], "float32")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    features = {"x": _data(3, 32, 3) * 4.0 + 3.0,
                "ids": np.random.default_rng(3).integers(0, 12, (32, 4)).astype("int32")}
    model.fit(features, _data(4, 32, 2), epochs=1, batch_size=8, verbose=0)
    return model


def _sequence_conv() -> keras.Model:
    _seeded(26)
    x = keras.Input((4, 6), name="x")
    sequence = keras.layers.LSTM(4, return_sequences=True, name="lstm")(x)
    last = keras.layers.GRU(3, name="gru")(sequence)
    bidirectional = keras.layers.Bidirectional(keras.layers.SimpleRNN(2), name="birnn")(x)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(x, x)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([x, attended]))
    image = keras.Input((6, 6, 2), name="image")
    steps = keras.Input((8, 3), name="sequence")
    a = keras.layers.Conv2D(3, 3, activation="relu")(image)
    a = keras.layers.DepthwiseConv2D(2, padding="same")(keras.layers.MaxPooling2D()(a))
    b = keras.layers.Conv1D(2, 3, dilation_rate=2, padding="causal")(steps)
    b = keras.layers.SeparableConv1D(2, 2)(b)
    convolved = keras.layers.Concatenate()([keras.layers.Flatten()(a),
                                            keras.layers.GlobalMaxPooling1D()(b)])
    return keras.Model({"x": x, "image": image, "sequence": steps}, {
        "gru": last, "birnn": bidirectional,
        "attention": keras.layers.Dense(2, name="attention")(pooled),
        "conv": keras.layers.Dense(2, name="conv")(convolved)})


def _preprocessing() -> keras.Model:
    _seeded(29)
    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(_data(5, 64, 3) * 3.0 + 10.0)
    bins = keras.layers.Discretization(num_bins=4, name="bins")
    bins.adapt(_data(6, 64, 3) * 3.0 + 10.0)
    vectorize = keras.layers.TextVectorization(max_tokens=12, output_sequence_length=5,
                                               name="vectorize")
    vectorize.adapt(TEXTS)
    tf_idf = keras.layers.TextVectorization(max_tokens=8, output_mode="tf_idf", name="tf_idf")
    tf_idf.adapt(TEXTS)
    adapted = keras.layers.StringLookup(name="adapted")
    adapted.adapt(np.array([["red"], ["green"], ["green"], ["blue"], ["blue"], ["blue"]]))

    x = keras.Input((3,), name="x")
    text = keras.Input((1,), dtype="string", name="text")
    color = keras.Input((1,), dtype="string", name="color")
    code = keras.Input((2,), dtype="int64", name="code")
    tokens = vectorize(text)
    color_ids = adapted(color)
    code_ids = keras.layers.IntegerLookup(vocabulary=CODES, name="code_ids")(code)
    outputs = {
        "tokens": tokens, "tf_idf": tf_idf(text), "color_ids": color_ids, "code_ids": code_ids,
        "bins": bins(x),
        "given": keras.layers.StringLookup(vocabulary=["small", "large"], num_oov_indices=2,
                                           name="given")(color),
        "one_hot": keras.layers.StringLookup(vocabulary=["red", "blue"], output_mode="one_hot",
                                             name="one_hot")(color),
        "counts": keras.layers.IntegerLookup(vocabulary=CODES, output_mode="count",
                                             name="counts")(code),
        "inverse": keras.layers.IntegerLookup(vocabulary=CODES, invert=True,
                                              name="inverse")(code_ids),
        "hashed": keras.layers.Hashing(num_bins=5, salt=7, name="hashed")(color),
    }
    embedded = keras.layers.Concatenate()([
        normalize(x),
        keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(12, 3)(tokens)),
        keras.layers.Flatten()(keras.layers.Embedding(5, 2)(color_ids)),
        keras.layers.Flatten()(keras.layers.Embedding(6, 2)(code_ids))])
    outputs["score"] = keras.layers.Dense(1, name="score")(embedded)
    # The padded token ids masked (mask_zero) through an LSTM.
    outputs["masked"] = keras.layers.LSTM(2, name="masked")(
        keras.layers.Embedding(12, 3, mask_zero=True)(tokens))
    return keras.Model({"x": x, "text": text, "color": color, "code": code}, outputs)


def _nested_subclassed() -> keras.Model:
    _seeded(35)
    model = TwoTower()
    model({"left": np.zeros((1, 3), "float32"), "right": np.zeros((1, 3), "float32")})
    return model


def _mixed_float16() -> keras.Model:
    _seeded(36)
    x = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, activation="relu", dtype="mixed_float16", name="hidden")(x)
    half = keras.layers.Dense(2, dtype="mixed_float16", name="half")(hidden)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(half)
    return keras.Model(x, {"half": half, "probs": probs})


def _bfloat16() -> keras.Model:
    _seeded(37)
    x = keras.Input((3,), dtype="bfloat16", name="x")
    custom = Bfloat16Weight(name="custom")
    half = keras.layers.Dense(2, dtype="bfloat16", name="half")(custom(x))
    model = keras.Model(x, {"half": half, "out": keras.layers.Dense(2, name="out")(half)})
    _reassign(custom, w=[0.5, -1.25, 3.0])
    return model


def _int8() -> keras.Model:
    _seeded(38)
    custom = Int8Weight(name="custom")
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, "relu"),
                              custom, keras.layers.Dense(3, "relu"),
                              keras.layers.Dense(2, name="out")], name="int8")
    _reassign(custom, q=[[-128, 127], [5, -7], [0, 64], [100, -3]], scale=[0.01, 0.02])
    # Keras's own quantization, one mode per Dense: int4 (packed into int8), float8, int8.
    for layer, mode in zip((model.layers[0], *model.layers[2:]), ("int4", "float8", "int8")):
        layer.quantize(mode)
    return model


def _loss_scale_optimizer() -> keras.Model:
    _seeded(41)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, "relu"),
                                  keras.layers.Dense(2, dtype="float32", name="out")],
                                 name="loss_scale")
        model.compile(optimizer="adam", loss="mse")  # a LossScaleOptimizer around Adam
        model.fit(_data(8, 8, 3), _data(9, 8, 2), epochs=1, batch_size=8, verbose=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return model


def _sparse_output() -> keras.Model:
    color = keras.Input((2,), dtype="string", name="color")
    lookup = keras.layers.StringLookup(vocabulary=["red", "blue"], output_mode="multi_hot",
                                       sparse=True, name="lookup")
    return keras.Model(color, lookup(color))


def _ragged_output() -> keras.Model:
    text = keras.Input((), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(ragged=True, name="vectorize")
    vectorize.adapt(TEXTS)
    return keras.Model(text, vectorize(text))


BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "build-read-ops-numpy": _build_read(("ops", BuildReadOps, "w", [0.5, -2.0, 4.0]),
                                        ("numpy", BuildReadNumpy, "w", [1.5, -1.0, 0.25])),
    "build-read-variable-non-trainable": _build_read(
        ("tf_variable", BuildReadTfVariable, "w", [-0.5, 2.0, 1.0]),
        ("non_trainable", BuildReadNonTrainable, "offset", [-1.0, 0.5, 7.0])),
    "trained-state": _trained_state,
    "sequence-conv": _sequence_conv,
    "preprocessing": _preprocessing,
    "nested-subclassed": _nested_subclassed,
    "mixed-float16": _mixed_float16,
    "bfloat16": _bfloat16,
    "int8": _int8,
    "loss-scale-optimizer": _loss_scale_optimizer,
    "sparse-output": _sparse_output,
    "ragged-output": _ragged_output,
}


# ---------------------------------------------------------------------------------------------
# Saving the corpus, and Keras's own answers.


def save_corpus(directory: Path, cases: list[Case] = CASES) -> dict[str, Any]:
    """Builds and saves every model and writes its inputs; returns the job for the reference
    process (`main`)."""
    directory.mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = {"cases": [], "output": str(directory / "reference.npz")}
    for number, case in enumerate(cases):
        model_path = directory / f"{case.name}.keras"
        BUILDERS[case.name]().save(model_path)
        inputs_path = directory / f"{case.name}.inputs.npz"
        np.savez(inputs_path, **case.inputs(np.random.default_rng(number)))
        job["cases"].append({"name": case.name, "model": str(model_path),
                             "inputs": str(inputs_path), "dtypes": case.input_dtypes(),
                             "as_dict": case.as_dict, "optimizer": case.optimizer})
    return job


def read_inputs(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def as_numpy(value: Any) -> tuple[np.ndarray, str]:
    """A tensor as an array numpy can save, and its dtype's name (bfloat16, which numpy's
    files do not hold, becomes float32: every bfloat16 is a float32 exactly)."""
    dtype = keras.backend.standardize_dtype(value.dtype)
    if dtype == "bfloat16":
        value = ops.cast(value, "float32")
    return np.asarray(ops.convert_to_numpy(value)), dtype


def keras_reference(job: dict[str, Any]) -> dict[str, Any]:
    """Keras's own load of every case's model, called on the case's inputs. Writes
    '<case>|<output>' arrays (and '<case>|optimizer|<i>', the optimizer's variables) to
    job['output']; returns {"dtypes": {key: dtype}, "errors": {case: error}}, errors being
    models that Keras itself cannot load or call."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    errors: dict[str, str] = {}
    for entry in job["cases"]:
        name = entry["name"]
        try:
            model = keras.saving.load_model(entry["model"])
            inputs = {key: ops.convert_to_tensor(value, dtype=entry["dtypes"][key])
                      for key, value in read_inputs(entry["inputs"]).items()}
            argument = inputs if entry["as_dict"] else next(iter(inputs.values()))
            outputs = model(argument, training=False)
        except Exception as err:  # recorded: the test of that case reports it
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        if isinstance(outputs, (list, tuple)):  # Keras's own names for them
            outputs = dict(zip(model.output_names, outputs, strict=True))
        elif not isinstance(outputs, dict):
            outputs = {SINGLE: outputs}
        variables = model.optimizer.variables if entry["optimizer"] else []
        named = {**outputs, **{f"optimizer|{i}": v for i, v in enumerate(variables)}}
        for key, value in named.items():
            arrays[f"{name}|{key}"], dtypes[f"{name}|{key}"] = as_numpy(value)
    np.savez(job["output"], **arrays)
    return {"dtypes": dtypes, "errors": errors}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    result = keras_reference(job)
    result["shipyard_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "shipyard")
    Path(job["output"]).with_suffix(".json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
