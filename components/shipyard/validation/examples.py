"""Examples -> the endpoint's declared inputs. Pure (numpy, json, csv); tf.Example records are
decoded by the caller into {feature: list of values} first.

Every example is mapped by input name to the signature's declared inputs: the values are
reshaped to the declared shape without its batch dimension and cast to the declared dtype.
Anything that does not fit raises ExampleError naming the feature, the example and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from shipyard.errors import UsageError

FORMATS = ("tfrecord", "csv", "jsonl")
_NUMPY = {"float16": np.float16, "float32": np.float32, "float64": np.float64,
          "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
          "uint8": np.uint8, "bool": np.bool_, "string": np.object_}


class ExampleError(UsageError):
    """An example cannot be mapped onto the endpoint's inputs (exit 2)."""


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str
    shape: tuple[int | None, ...]  # including the batch dimension

    @property
    def example_shape(self) -> tuple[int | None, ...]:
        return self.shape[1:]


def declared_inputs(signature: dict[str, Any]) -> list[InputDecl]:
    """From shipyard.json's `signatures[<endpoint>]`."""
    return [InputDecl(name, spec["dtype"], tuple(spec["shape"]))
            for name, spec in sorted(signature["inputs"].items())]


def format_of(pattern: str, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {given!r}")
        return given
    for fmt, suffixes in (("tfrecord", (".tfrecord", ".tfrecords", ".tfrecord.gz")),
                          ("csv", (".csv",)), ("jsonl", (".jsonl", ".json"))):
        if pattern.endswith(suffixes):
            return fmt
    raise UsageError(f"--examples {pattern}: cannot tell the format from the name; pass "
                     f"--format {'|'.join(FORMATS)}")


def parse_csv_header(line: str) -> list[str]:
    return next(csv.reader([line]))


def csv_row(header: list[str], line: str) -> dict[str, Any]:
    """One CSV line -> {column: cell}. A tensor input `f` of shape [3] is either the columns
    f_0, f_1, f_2 or one cell "1 2 3" (numeric inputs only: text may contain spaces)."""
    cells = next(csv.reader(io.StringIO(line)))
    if len(cells) != len(header):
        raise ExampleError(f"the row has {len(cells)} cells but the header names "
                           f"{len(header)} columns")
    return dict(zip(header, cells))


def json_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ExampleError(f"not a JSON object: {err}") from None
    if not isinstance(row, dict):
        raise ExampleError(f"expected a JSON object per line, got {type(row).__name__}")
    return row


def to_inputs(row: dict[str, Any], decls: list[InputDecl]) -> dict[str, np.ndarray]:
    """{input name: array of the declared per-example shape and dtype}."""
    missing = [d.name for d in decls if d.name not in row and f"{d.name}_0" not in row]
    if missing:
        raise ExampleError(
            f"missing feature(s) {', '.join(missing)} (the endpoint's inputs are "
            f"{', '.join(f'{d.name}: {d.dtype}{list(d.shape)}' for d in decls)}; the example "
            f"has {', '.join(sorted(row)) or 'no features'})")
    return {d.name: _array(_values(row, d), d) for d in decls}


def _values(row: dict[str, Any], decl: InputDecl) -> list[Any]:
    if decl.name in row:
        return _flat(row[decl.name], decl)
    values: list[Any] = []
    index = 0
    while f"{decl.name}_{index}" in row:
        values.extend(_flat(row[f"{decl.name}_{index}"], decl))
        index += 1
    return values


def _flat(value: Any, decl: InputDecl) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(np.asarray(value, dtype=object).reshape(-1))
    if isinstance(value, str) and decl.dtype != "string":
        return value.split()  # "1 2 3" in one cell; an empty cell has no value
    return [value]


def _array(values: list[Any], decl: InputDecl) -> np.ndarray:
    shape = decl.example_shape
    known = [d for d in shape if d is not None]
    expected = int(np.prod(known)) if known else 1
    if None in shape:
        if len([d for d in shape if d is None]) > 1 or (known and len(values) % expected):
            raise ExampleError(f"feature {decl.name}: {len(values)} value(s) do not fit the "
                               f"declared shape {list(decl.shape)}")
        shape = tuple(d if d is not None else len(values) // expected for d in shape)
    elif len(values) != expected:
        raise ExampleError(f"feature {decl.name}: expected {expected} value(s) for the declared "
                           f"shape {list(decl.shape)}, got {len(values)}")
    if any(v is None for v in values):
        raise ExampleError(f"feature {decl.name}: null value(s); every declared input needs "
                           "a value")
    try:
        if decl.dtype == "string":
            array = np.array([v.encode() if isinstance(v, str) else bytes(v) if isinstance(
                v, (bytes, bytearray)) else str(v).encode() for v in values], dtype=object)
        elif decl.dtype == "bool":
            array = np.array([_bool(v) for v in values], dtype=np.bool_)
        else:
            numbers = [float(v) if isinstance(v, (str, bytes)) else v for v in values]
            array = np.array(numbers, dtype=np.float64).astype(_NUMPY[decl.dtype])
            if decl.dtype.startswith(("int", "uint")) and not np.all(
                    np.array(numbers, dtype=np.float64) == array):
                raise ValueError("not an integer")
    except (ValueError, TypeError, KeyError) as err:
        raise ExampleError(f"feature {decl.name}: cannot read {values[:4]!r} as "
                           f"{decl.dtype} ({err})") from None
    return array.reshape(shape)


def _bool(value: Any) -> bool:
    text = str(value.decode() if isinstance(value, bytes) else value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def batch(examples: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks per-example arrays along a new batch dimension."""
    examples = list(examples)
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}
