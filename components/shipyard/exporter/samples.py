"""Inputs generated from an endpoint's declared signature (numpy only; no TensorFlow).

The same arrays feed the original model, the verifier and the warmup records. Generation is
seeded per (endpoint, batch size), so reruns produce the same inputs.

Strings and integers come from the model's vocabularies (its lookup tables' keys) where it has
them, and the last row of a batch of several (the last example of a tf_example input) carries
values outside them instead, so both a lookup's hit and its out-of-vocabulary path are
exercised; batch-1 samples, the first warmup record of each endpoint, hold vocabulary entries
only.

A tf_example input gets valid serialized tf.Examples built from its feature spec (an object
array of bytes: numpy's fixed-width bytes would drop the trailing NUL bytes a serialized proto
may end with); only serializing them imports TensorFlow's Example proto.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.core.spec import Endpoint, FeatureDecl, TensorDecl

BATCH_SIZES = (1, 4)
FREE_DIMENSION = 2  # size used for an unknown non-batch dimension
_FALLBACK_STRINGS = ("a", "b", "shipyard")


@dataclass(frozen=True)
class Vocabularies:
    """Values the model's lookup layers know, so string/int inputs hit real entries.

    `out_of_vocabulary`: whether samples also carry values outside them; false for a model
    whose lookups reject such values (Keras's num_oov_indices=0), which no request may send.
    """

    strings: tuple[str, ...] = ()
    integers: tuple[int, ...] = ()
    out_of_vocabulary: bool = True


@dataclass
class Sample:
    endpoint: str
    batch_size: int
    arguments: list[Any]  # one entry per positional argument: array, dict or list of arrays
    named: dict[str, np.ndarray] = field(default_factory=dict)  # signature input name -> array
    real: bool = False  # built from real examples (--examples), not generated

    @property
    def key(self) -> str:
        """Tells samples of one endpoint apart: the batch size, and whether they are real."""
        return f"{self.batch_size}-real" if self.real else str(self.batch_size)


def batch_sizes(endpoint: Endpoint) -> tuple[int, ...]:
    """Two batch sizes when the leading dimension is free, else the fixed one."""
    leading = {tensor.shape[0] if tensor.shape else None
               for _, tensor in endpoint.signature_inputs()}
    fixed = {d for d in leading if d is not None}
    if fixed:
        return (min(fixed),)
    return BATCH_SIZES


def make_samples(endpoint: Endpoint, vocab: Vocabularies,
                 real_examples: tuple[bytes, ...] = ()) -> list[Sample]:
    """Samples at each batch size. With `real_examples` (serialized tf.Examples), a tf_example
    endpoint is called with one of them, then with all of them."""
    sizes = batch_sizes(endpoint)
    if real_examples and endpoint.examples_input() is not None:
        sizes = tuple(dict.fromkeys((1, len(real_examples))))
    return [make_sample(endpoint, size, vocab, real_examples) for size in sizes]


def make_real_samples(endpoint: Endpoint, vocab: Vocabularies,
                      real_examples: tuple[bytes, ...]) -> list[Sample]:
    samples = make_samples(endpoint, vocab, real_examples)
    for sample in samples:
        sample.real = True
    return samples


def make_sample(endpoint: Endpoint, batch_size: int, vocab: Vocabularies,
                real_examples: tuple[bytes, ...] = ()) -> Sample:
    rng = np.random.default_rng(zlib.crc32(f"{endpoint.name}|{batch_size}".encode()))
    names = iter(name for name, _ in endpoint.signature_inputs())
    named: dict[str, np.ndarray] = {}

    def tensor(decl: TensorDecl) -> np.ndarray:
        if decl.tf_example is not None:
            value = (np.array(real_examples[:batch_size], dtype=object) if real_examples
                     else random_examples(decl.tf_example, batch_size, rng, vocab))
        else:
            value = _random_tensor(decl, batch_size, rng, vocab)
        named[next(names)] = value
        return value

    arguments: list[Any] = []
    for argument in endpoint.inputs:
        if isinstance(argument, TensorDecl):
            arguments.append(tensor(argument))
        elif isinstance(argument, dict):
            arguments.append({key: tensor(decl) for key, decl in argument.items()})
        else:
            arguments.append([tensor(decl) for decl in argument])
    return Sample(endpoint.name, batch_size, arguments, named)


def _random_tensor(decl: TensorDecl, batch_size: int, rng: np.random.Generator,
                   vocab: Vocabularies, *, outside: bool | None = None) -> np.ndarray:
    """`outside`: whether strings and integers are all out of vocabulary (True), none are
    (False), or, by default, those of the last row when there are several rows."""
    shape = tuple(
        (batch_size if i == 0 else FREE_DIMENSION) if d is None else d
        for i, d in enumerate(decl.shape)
    )
    if decl.dtype == "string":
        pool = vocab.strings or _FALLBACK_STRINGS
        values = np.array([s.encode() for s in rng.choice(pool, size=int(np.prod(shape)))],
                          dtype=object).reshape(shape)
        if vocab.strings and vocab.out_of_vocabulary:
            _put_outside(values, [s.encode() for s in _outside_strings(vocab.strings)], outside)
        return values.astype(bytes)
    if decl.dtype == "bool":
        return rng.random(shape) < 0.5
    if decl.dtype.startswith(("int", "uint")):
        if vocab.integers:
            values = rng.choice(np.array(vocab.integers), size=shape)
            if vocab.out_of_vocabulary:
                _put_outside(values, _outside_integers(vocab.integers), outside)
        else:
            values = rng.integers(0, 10, size=shape)
        return values.astype(decl.dtype)
    # Floats: standard normal; bfloat16 has no numpy dtype, so it travels as float32 and is
    # cast to the declared dtype when it becomes a tensor.
    dtype = "float32" if decl.dtype == "bfloat16" else decl.dtype
    return rng.standard_normal(shape).astype(dtype)


def _put_outside(values: np.ndarray, outside_values: list[Any], outside: bool | None) -> None:
    """Replaces, in place, the values `outside` selects (see _random_tensor) with values out
    of vocabulary. Nothing is drawn from the generator for them, so every other value of a
    sample is the one it would be without them."""
    mask = np.full(values.shape, bool(outside))
    if outside is None and values.ndim and values.shape[0] > 1:
        mask[-1] = True
    replacements = np.empty(len(outside_values), dtype=values.dtype)
    replacements[:] = outside_values
    values[mask] = np.resize(replacements, int(mask.sum()))


def _outside_strings(known: tuple[str, ...]) -> list[str]:
    """Three strings no vocabulary entry equals: the fallback strings where free."""
    known_set = set(known)
    candidates = itertools.chain(_FALLBACK_STRINGS, (f"shipyard-{i}" for i in itertools.count()))
    return list(itertools.islice((s for s in candidates if s not in known_set), 3))


def _outside_integers(known: tuple[int, ...]) -> list[int]:
    """The three smallest non-negative integers no vocabulary entry equals: small enough for
    any integer dtype, and non-negative like ids and indices are."""
    known_set = set(known)
    return list(itertools.islice((i for i in itertools.count() if i not in known_set), 3))


def random_examples(features: dict[str, FeatureDecl], batch_size: int, rng: np.random.Generator,
                    vocab: Vocabularies) -> np.ndarray:
    """`batch_size` serialized tf.Examples carrying every declared feature; of several, the
    last one's strings and integers are out of vocabulary."""
    examples = []
    for index in range(batch_size):
        outside = batch_size > 1 and index == batch_size - 1
        values = {}
        for name, feature in features.items():
            shape = list(feature.shape)
            if feature.variable_length:
                shape[0] = int(rng.integers(1, FREE_DIMENSION + 2))
            decl = TensorDecl(shape=[1, *shape], dtype=feature.dtype)
            values[name] = _random_tensor(decl, 1, rng, vocab, outside=outside).reshape(-1)
        examples.append(serialize_example(values))
    return np.array(examples, dtype=object)


def serialize_example(values: dict[str, np.ndarray]) -> bytes:
    """{feature: flat values} -> a serialized tf.Example (floats, int64s or bytes)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, array in values.items():
        feature = example.features.feature[name]
        if array.dtype.kind in "SOU":
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode()
                                            for v in array.tolist())
        elif array.dtype.kind == "f":
            feature.float_list.value.extend(array.astype(np.float32).tolist())
        else:
            feature.int64_list.value.extend(array.astype(np.int64).tolist())
    return example.SerializeToString()
