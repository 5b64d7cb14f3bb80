"""Inputs generated from an endpoint's declared signature (numpy only; no TensorFlow).

The same arrays feed the original model, the verifier and the warmup records. Generation is
seeded per (endpoint, batch size), so reruns produce the same inputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.spec import Endpoint, TensorDecl

BATCH_SIZES = (1, 4)
FREE_DIMENSION = 2  # size used for an unknown non-batch dimension
_FALLBACK_STRINGS = ("a", "b", "shipyard")


@dataclass(frozen=True)
class Vocabularies:
    """Values the model's lookup layers know, so string/int inputs hit real entries."""

    strings: tuple[str, ...] = ()
    integers: tuple[int, ...] = ()


@dataclass
class Sample:
    endpoint: str
    batch_size: int
    arguments: list[Any]  # one entry per positional argument: array, dict or list of arrays
    named: dict[str, np.ndarray] = field(default_factory=dict)  # signature input name -> array


def batch_sizes(endpoint: Endpoint) -> tuple[int, ...]:
    """Two batch sizes when the leading dimension is free, else the fixed one."""
    leading = {tensor.shape[0] if tensor.shape else None
               for _, tensor in endpoint.signature_inputs()}
    fixed = {d for d in leading if d is not None}
    if fixed:
        return (min(fixed),)
    return BATCH_SIZES


def make_samples(endpoint: Endpoint, vocab: Vocabularies) -> list[Sample]:
    return [make_sample(endpoint, size, vocab) for size in batch_sizes(endpoint)]


def make_sample(endpoint: Endpoint, batch_size: int, vocab: Vocabularies) -> Sample:
    rng = np.random.default_rng(zlib.crc32(f"{endpoint.name}|{batch_size}".encode()))
    names = iter(name for name, _ in endpoint.signature_inputs())
    named: dict[str, np.ndarray] = {}

    def tensor(decl: TensorDecl) -> np.ndarray:
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
                   vocab: Vocabularies) -> np.ndarray:
    shape = tuple(
        (batch_size if i == 0 else FREE_DIMENSION) if d is None else d
        for i, d in enumerate(decl.shape)
    )
    if decl.dtype == "string":
        pool = vocab.strings or _FALLBACK_STRINGS
        return np.array([s.encode() for s in rng.choice(pool, size=int(np.prod(shape)))],
                        dtype=object).reshape(shape).astype(bytes)
    if decl.dtype == "bool":
        return rng.random(shape) < 0.5
    if decl.dtype.startswith(("int", "uint")):
        if vocab.integers:
            values = rng.choice(np.array(vocab.integers), size=shape)
        else:
            values = rng.integers(0, 10, size=shape)
        return values.astype(decl.dtype)
    # Floats: standard normal; bfloat16 has no numpy dtype, so it travels as float32 and is
    # cast to the declared dtype when it becomes a tensor.
    dtype = "float32" if decl.dtype == "bfloat16" else decl.dtype
    return rng.standard_normal(shape).astype(dtype)
