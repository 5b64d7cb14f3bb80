"""Examples -> the endpoint's declared inputs. Pure (numpy, json, csv); tf.Example records are
decoded by the caller into {feature: list of values} first.

Every example is mapped by input name to the signature's declared inputs: the values are
reshaped to the declared shape without its batch dimension and cast to the declared dtype.
Anything that does not fit raises ExampleError naming the feature, the example and the fix.

An endpoint that takes serialized tf.Examples (a `tf_example` input) is fed differently: a
TFRecord record is passed on as it is (only checked against the feature spec, so one bad
record is reported instead of failing a whole batch inside the model), and a CSV or JSONL row
is serialized to a tf.Example with the declared feature spec.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from shipyard.core.errors import UsageError

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


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a tf_example input, as the endpoint parses it."""

    name: str
    dtype: str  # float32 | int64 | string
    shape: tuple[int | None, ...]  # per example; a None first dimension: variable length
    has_default: bool

    @property
    def variable_length(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    @property
    def values_per_row(self) -> int:
        """Values per example (fixed length) or per step (variable length)."""
        known = self.shape[1:] if self.variable_length else self.shape
        return math.prod(known)

    def shape_text(self) -> str:
        return "[" + ", ".join("null" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{self.shape_text()}"


@dataclass(frozen=True)
class ExamplesInput:
    """The endpoint's one input of serialized tf.Examples, and the features it parses."""

    name: str  # the signature input: `inputs` for classify/regress, else the declared name
    features: tuple[FeatureSpec, ...]


def examples_input(spec: dict[str, Any], endpoint: str) -> ExamplesInput | None:
    """From shipyard.json's normalized `spec`: the endpoint's tf_example input, if it has one.

    Only an endpoint whose one input is tf_example is fed examples: rows or records cannot say
    which of their features belong to the examples and which to other tensors."""
    from shipyard.core.spec import parse_spec

    declared = next(e for e in parse_spec(spec).endpoints if e.name == endpoint)
    decl = declared.examples_input()
    if decl is None:
        return None
    inputs = declared.signature_inputs()
    if len(inputs) != 1:
        raise UsageError(
            f"endpoint {endpoint!r} takes serialized tf.Examples beside other inputs "
            f"({', '.join(name for name, _ in inputs)}); validate feeds endpoints whose only "
            "input is tf_example, or that take plain tensors only: validate another endpoint "
            "(--endpoint)")
    features = tuple(FeatureSpec(name, f.dtype, tuple(f.shape), f.default is not None)
                     for name, f in sorted(decl.tf_example.items()))
    return ExamplesInput(inputs[0][0], features)


def format_of(pattern: str, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise UsageError(f"format: expected one of {', '.join(FORMATS)}, got {given!r}",
                             param="format")
        return given
    for fmt, suffixes in (("tfrecord", (".tfrecord", ".tfrecords", ".tfrecord.gz")),
                          ("csv", (".csv",)), ("jsonl", (".jsonl", ".json"))):
        if pattern.endswith(suffixes):
            return fmt
    raise UsageError(f"examples {pattern}: cannot tell the format from the name; pass "
                     f"--format {'|'.join(FORMATS)}", param="examples")


def parse_csv_header(line: str) -> list[str]:
    return next(csv.reader([line]))


def csv_row(header: list[str], line: str) -> dict[str, Any]:
    """One CSV line -> {column: cell}. A tensor input `f` of shape [3] is either the columns
    f_0, f_1, f_2 or one cell "1 2 3" (numeric inputs only: text may contain spaces)."""
    try:
        cells = next(csv.reader(io.StringIO(line)), [])  # an empty line: no cells
    except csv.Error as err:  # a lone \r in an unquoted cell, ...
        raise ExampleError(f"not a CSV row: {err}") from None
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


def _values(row: dict[str, Any], decl: InputDecl) -> Any:
    if decl.name in row:
        return _flat(row[decl.name], decl)
    values: list[Any] = []
    index = 0
    while f"{decl.name}_{index}" in row:
        flat = _flat(row[f"{decl.name}_{index}"], decl)
        values.extend(flat.tolist() if isinstance(flat, np.ndarray) else flat)
        index += 1
    return values


def _flat(value: Any, decl: InputDecl) -> Any:
    """The value's flat values: a list, or a numeric array as it came (a tf.Example's
    float_list or int64_list, already decoded into one)."""
    if isinstance(value, np.ndarray):
        return value.reshape(-1)
    if isinstance(value, (list, tuple)):
        return list(np.asarray(value, dtype=object).reshape(-1))
    if isinstance(value, str) and decl.dtype != "string":
        return value.split()  # "1 2 3" in one cell; an empty cell has no value
    return [value]


def _array(values: Any, decl: InputDecl) -> np.ndarray:
    shape = _example_shape(len(values), decl)
    if isinstance(values, np.ndarray):
        if decl.dtype not in ("string", "bool"):
            return _numeric_array(values, decl).reshape(shape)
        values = values.tolist()  # the Python numbers a list of the same values would hold
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


def _example_shape(count: int, decl: InputDecl) -> tuple[int, ...]:
    """The declared per-example shape that `count` values fill, or an ExampleError."""
    shape = decl.example_shape
    known = [d for d in shape if d is not None]
    expected = math.prod(known)
    if None in shape:
        if len([d for d in shape if d is None]) > 1 or (known and count % expected):
            raise ExampleError(f"feature {decl.name}: {count} value(s) do not fit the "
                               f"declared shape {list(decl.shape)}")
        return tuple(d if d is not None else count // expected for d in shape)
    if count != expected:
        raise ExampleError(f"feature {decl.name}: expected {expected} value(s) for the declared "
                           f"shape {list(decl.shape)}, got {count}")
    return tuple(shape)  # type: ignore[arg-type]  (no None in it)


def _numeric_array(values: np.ndarray, decl: InputDecl) -> np.ndarray:
    """A numeric array -> the declared numeric dtype, in one vectorized step. The same
    conversion as the per-value path (through float64; integers must stay integral), without
    a Python object per value: validate's throughput on TFRecord examples depends on it."""
    numbers = values.astype(np.float64, copy=False)
    array = numbers.astype(_NUMPY[decl.dtype])
    if decl.dtype.startswith(("int", "uint")) and not np.array_equal(numbers, array):
        raise ExampleError(f"feature {decl.name}: cannot read {values[:4].tolist()!r} as "
                           f"{decl.dtype} (not an integer)")
    return array


def _bool(value: Any) -> bool:
    text = str(value.decode() if isinstance(value, bytes) else value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def to_example(row: dict[str, Any], spec: ExamplesInput) -> bytes:
    """A CSV or JSONL row -> one serialized tf.Example carrying the declared features (columns
    and keys the spec does not declare, such as labels or ids, are left out).

    A feature is read the way a tensor input is (`x` of shape [3]: the columns x_0..x_2, one
    cell "1 2 3", or a JSON list). A missing feature (no column or key, a JSON null, or an
    empty CSV cell of a fixed-length number feature) is left out of the example when it
    declares a default, since the endpoint's parser then fills in that default as it does for
    any client; otherwise it is an error naming the feature and the fix."""
    from shipyard.exporter.samples import serialize_example

    values: dict[str, np.ndarray] = {}
    missing = []
    for feature in spec.features:
        flat = _feature_values(row, feature)
        if flat is None:
            if not feature.has_default:
                missing.append(feature)
            continue
        values[feature.name] = _typed(flat, feature)
    if missing:
        raise ExampleError(
            f"missing feature(s) {', '.join(f.name for f in missing)} of input "
            f"{spec.name!r} (declared {'; '.join(f.describe() for f in missing)}, without a "
            f"default; the example has {', '.join(sorted(row)) or 'no features'}): add them to "
            "the examples, or declare a `default:` for them in the export spec's tf_example")
    return serialize_example(values)


_KINDS = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}


def check_record(features: dict[str, tuple[str | None, int]], spec: ExamplesInput) -> None:
    """A tf.Example record ({feature: (value kind, number of values)}) against the feature
    spec, as tf.io.parse_example would judge it; the record itself is fed unchanged."""
    missing = []
    for feature in spec.features:
        kind, count = features.get(feature.name, (None, 0))
        if kind is None:  # absent, or present with no value list at all
            if not feature.has_default and not feature.variable_length:
                missing.append(feature)
            continue
        if kind != _KINDS[feature.dtype]:
            raise ExampleError(f"feature {feature.name}: the record holds {kind} values where "
                               f"{feature.describe()} is declared ({_KINDS[feature.dtype]})")
        _check_count(count, feature)
    if missing:
        raise ExampleError(
            f"missing feature(s) {', '.join(f.name for f in missing)} of input "
            f"{spec.name!r} (declared {'; '.join(f.describe() for f in missing)}, without a "
            f"default; the record has {', '.join(sorted(features)) or 'no features'}): add "
            "them to the examples, or declare a `default:` for them in the export spec's "
            "tf_example")


def _feature_values(row: dict[str, Any], feature: FeatureSpec) -> list[Any] | None:
    """The feature's flat values in the row; None when the row does not carry it."""
    decl = InputDecl(feature.name, feature.dtype, (None, *feature.shape))
    if feature.name in row:
        value = row[feature.name]
        if value is None:  # JSON null
            return None
        values = _flat(value, decl)
        if (isinstance(value, str) and not value.strip() and feature.dtype != "string"
                and not feature.variable_length):
            return None  # an empty CSV cell: no value given
    elif f"{feature.name}_0" in row:
        values = _values(row, decl)
    else:
        return None
    if any(v is None for v in values):
        raise ExampleError(f"feature {feature.name}: null value(s) in {values[:4]!r}; give "
                           "every value, or leave the feature out to use its default")
    return values


def _typed(values: list[Any], feature: FeatureSpec) -> np.ndarray:
    _check_count(len(values), feature)
    try:
        if feature.dtype == "string":
            return np.array([v if isinstance(v, bytes) else bytes(v) if isinstance(
                v, bytearray) else str(v).encode() for v in values], dtype=object)
        if feature.dtype == "int64":
            return np.array([_int64(v) for v in values], dtype=np.int64)
        return np.array([float(v) for v in values], dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as err:
        raise ExampleError(f"feature {feature.name}: cannot read {values[:4]!r} as "
                           f"{feature.dtype} ({err})") from None


def _int64(value: Any) -> int:
    # int() first: float64 would round ids above 2**53.
    if isinstance(value, (str, bytes)):
        try:
            number = int(value)
        except ValueError:
            number = _integral(float(value))
    elif isinstance(value, (bool, int, np.integer)):
        number = int(value)
    else:
        number = _integral(float(value))
    if not -2**63 <= number < 2**63:
        raise ValueError(f"{value!r} is out of the int64 range")
    return number


def _integral(number: float) -> int:
    if not number.is_integer():
        raise ValueError(f"{number!r} is not an integer")
    return int(number)


def _check_count(count: int, feature: FeatureSpec) -> None:
    per_row = feature.values_per_row
    if feature.variable_length:
        if per_row and count % per_row:
            raise ExampleError(f"feature {feature.name}: {count} value(s) do not fit the "
                               f"declared shape {feature.shape_text()} (a multiple of "
                               f"{per_row})")
    elif count != per_row:
        raise ExampleError(f"feature {feature.name}: expected {per_row} value(s) for the "
                           f"declared shape {feature.shape_text()}, got {count}")


def batch(examples: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks per-example arrays along a new batch dimension."""
    examples = list(examples)
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}


def shared_csv_header(paths: list[str], first_line: Callable[[str], str]
                      ) -> tuple[str, ...]:
    """The header all CSV files share (each file's first line is skipped as its header);
    `first_line` reads a file's first line, through the runner's file systems."""
    headers = {}
    for path in paths:
        first = first_line(path)
        if not first:
            raise UsageError(f"examples: {path} is empty; a CSV file needs a header line",
                             param="examples")
        headers[path] = tuple(parse_csv_header(first))
    first_path, header = next(iter(headers.items()))
    for path, other in headers.items():
        if other != header:
            raise UsageError(f"examples: {path} has the header {','.join(other)} but "
                             f"{first_path} has {','.join(header)}; columns are mapped by one "
                             "header, so give every file the same one", param="examples")
    return header
