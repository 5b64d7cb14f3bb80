"""The model corpus (integration/test_model_corpus.py), as data: each model's name, what it
covers, its export spec and the inputs it is compared on. The models themselves are built in
support/corpus_models.py (which imports TensorFlow); this module imports only numpy, so that
test collection stays free of TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Inputs = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One model of the corpus.

    inputs: signature input name -> array (bfloat16 inputs travel as float32 values that
    bfloat16 holds exactly, and become bfloat16 tensors on both sides); the model takes them
    as its one tensor, or as a dict when `as_dict`. refused: why shipyard refuses to export
    it (None: it exports, and answers like Keras's own load)."""

    name: str
    covers: str
    spec: dict
    inputs: Inputs
    as_dict: bool = False
    optimizer: bool = False  # also compare the optimizer's variables (a collection `optimizer`)
    refused: str | None = None

    def input_dtypes(self) -> dict[str, str]:
        arguments = self.spec["endpoints"][0]["inputs"][0]
        if "dtype" in arguments:
            return {arguments["name"]: arguments["dtype"]}
        return {name: decl["dtype"] for name, decl in arguments.items()}


def spec(inputs: dict[str, tuple[list[int | None], str]], *, atol: float = 1e-5,
         rtol: float = 1e-5, collections: list[dict] | None = None,
         as_dict: bool = False) -> dict:
    """One endpoint `serve` (method call) taking `inputs` as one tensor or as one dict."""
    declared = {name: {"shape": shape, "dtype": dtype} for name, (shape, dtype) in inputs.items()}
    if as_dict:
        argument = declared
    else:
        ((name, decl),) = declared.items()
        argument = {"name": name, **decl}
    document = {"endpoints": [{"name": "serve", "method": "call", "inputs": [argument]}],
                "tolerance": {"atol": atol, "rtol": rtol}}
    if collections:
        document["variable_collections"] = collections
    return document


def floats(name: str, *shape: int, scale: float = 1.0, shift: float = 0.0,
           bfloat16: bool = False) -> Inputs:
    def make(rng: np.random.Generator) -> np.ndarray:
        values = rng.standard_normal((5, *shape)) * scale + shift
        if bfloat16:  # values bfloat16 holds exactly: 8 significant bits
            values = np.round(values * 64) / 64
        return values.astype("float32")

    return lambda rng: {name: make(rng)}


def several(*makers: Inputs) -> Inputs:
    return lambda rng: {k: v for make in makers for k, v in make(rng).items()}


def strings(name: str, pool: list[str], *shape: int) -> Inputs:
    return lambda rng: {name: np.array(rng.choice(pool, size=(7, *shape))).astype(bytes)}


X3 = {"x": ([None, 3], "float32")}
TEXTS = ["the cat sat", "a dog ran far", "the dog sat on the mat", "cats and dogs",
         "a cat ran", "far far away"]
CODES = [3, 7, 11, 42]


def _preprocessing_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": (rng.standard_normal((6, 3)) * 3.0 + 10.0).astype("float32"),
            "text": np.array([["the cat sat"], ["unknown words here"], [""],
                              ["far away dog mat"], ["A CAT, ran!"], ["far far far"]]
                             ).astype(bytes),
            "color": np.array(rng.choice(["red", "green", "blue", "small", "large", "mauve",
                                          ""], size=(6, 1))).astype(bytes),
            "code": rng.choice([*CODES, 0, 5, -1], size=(6, 2)).astype("int64")}


CASES = [
    Case("build-read-ops-numpy", "custom layers that read their weight in build(): through "
         "keras.ops (ones initializer; project issue 22), and through Variable.numpy() "
         "(Constant initializer); one output each, as a list", spec(X3), floats("x", 3)),
    Case("build-read-variable-non-trainable", "custom layers that read in build() the "
         "tf.Variable behind their weight (seeded RandomNormal initializer), and a "
         "non-trainable variable; one output each, as a list", spec(X3), floats("x", 3)),
    Case("trained-state", "trained with Adam: custom layers with non-trainable state (float "
         "and int32 variables updated only in training, a numpy table saved through "
         "save_own_variables), BatchNormalization (moving statistics off their defaults), "
         "seeded and unseeded Dropout, in inference; an Embedding on int32 ids; variable "
         "collection `select: optimizer`, its values compared with Keras's load",
         spec({"x": ([None, 3], "float32"), "ids": ([None, 4], "int32")}, as_dict=True,
              collections=[{"name": "optimizer_variables", "select": "optimizer"}]),
         several(floats("x", 3, scale=4.0, shift=3.0),
                 lambda rng: {"ids": rng.integers(0, 12, (5, 4)).astype("int32")}),
         as_dict=True, optimizer=True),
    Case("sequence-conv", "LSTM, GRU, a bidirectional SimpleRNN, MultiHeadAttention "
         "(self-attention with a residual); Conv2D, MaxPooling2D, DepthwiseConv2D, a dilated "
         "causal Conv1D, SeparableConv1D",
         spec({"x": ([None, 4, 6], "float32"), "image": ([None, 6, 6, 2], "float32"),
               "sequence": ([None, 8, 3], "float32")}, as_dict=True),
         several(floats("x", 4, 6), floats("image", 6, 6, 2), floats("sequence", 8, 3)),
         as_dict=True),
    Case("preprocessing", "adapted on data: Normalization, TextVectorization (int and tf_idf), "
         "StringLookup, Discretization; StringLookup with a given vocabulary and 2 OOV "
         "buckets, one-hot; IntegerLookup (ids, counts, inverted); Hashing; lookups into "
         "Embeddings, one masked (mask_zero) into an LSTM; unknown words, punctuation, empty "
         "strings and unknown codes in",
         spec({"x": ([None, 3], "float32"), "text": ([None, 1], "string"),
               "color": ([None, 1], "string"), "code": ([None, 2], "int64")}, as_dict=True),
         _preprocessing_inputs, as_dict=True),
    Case("nested-subclassed", "a subclassed model taking a dict and returning one, holding a "
         "functional sub-model (that nests a Sequential) called on both towers, a Dense shared "
         "by both, LayerNormalization", spec({"left": ([None, 3], "float32"),
                                               "right": ([None, 3], "float32")},
                                              as_dict=True),
         several(floats("left", 3), floats("right", 3)), as_dict=True),
    Case("mixed-float16", "the mixed_float16 policy (float16 compute, float32 variables); a "
         "float16 and a float32 output", spec(X3, atol=2e-3, rtol=2e-3), floats("x", 3)),
    Case("bfloat16", "a bfloat16 input, a bfloat16 variable in a float32 layer, a bfloat16 "
         "Dense whose output is bfloat16", spec({"x": ([None, 3], "bfloat16")},
                                              atol=2e-2, rtol=2e-2),
         floats("x", 3, bfloat16=True)),
    Case("int8", "an int8 weight dequantized in a custom layer; Dense layers quantized by "
         "Keras: int4 (packed in int8), float8 and int8 kernels with their scales", spec(X3, atol=1e-4,
                                                                           rtol=1e-4),
         floats("x", 3)),
    Case("loss-scale-optimizer", "mixed_float16 as the global policy, so compile() wraps Adam "
         "in a LossScaleOptimizer, trained a step; `select: optimizer`",
         spec(X3, collections=[{"name": "optimizer_variables", "select": "optimizer"}]),
         floats("x", 3),
         refused="loaded under the float32 policy, Keras rebuilds a plain Adam and skips "
                 "loading the saved optimizer state (a warning only): the collection would "
                 "hold fresh values"),
    Case("sparse-output", "a StringLookup with sparse=True (multi_hot): a SparseTensor out",
         spec({"color": ([None, 2], "string")}), strings("color", ["red", "blue"], 2),
         refused="a serving signature returns dense tensors; TF Serving cannot return a "
                 "SparseTensor"),
    Case("ragged-output", "a TextVectorization with ragged=True: a RaggedTensor out",
         spec({"text": ([None], "string")}), strings("text", TEXTS),
         refused="a serving signature returns dense tensors; TF Serving cannot return a "
                 "RaggedTensor"),
]
CASES_BY_NAME = {case.name: case for case in CASES}
