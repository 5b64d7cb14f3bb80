"""Whole batches of raw examples -> the endpoint's declared inputs, in vectorized steps.
Pure (numpy, pyarrow); the pipeline's adapter parses TFRecord batches with TensorFlow first.

The pipeline batches raw records before mapping them, then maps each batch here in one step:
a TFRecord batch through one `tf.io.parse_example` (its arrays are converted by
`from_parsed`), a CSV or JSONL batch through pyarrow's readers (`read_csv`, `read_jsonl`,
then `table_inputs`). Only the layout every record of a good batch shares is handled here:
each input under its own name (or, for a table, the split form x_0, x_1, ... of one value
per cell), values of the list kind the input's dtype is read from, no nulls, every example
of the declared shape.

Anything else raises BatchFallback, and the caller maps that batch record by record with
examples.py, whose messages name the record and the feature. So a batch is either mapped here
to the very arrays the per-record path would give, or judged by the per-record path alone:
the two cannot disagree on which records are good (tests/integration/
test_validate_vectorized.py runs both on the same files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from shipyard.validation.examples import ExampleError, InputDecl, _numeric_array


class BatchFallback(Exception):
    """This batch cannot be mapped in one step; map it record by record."""


@dataclass(frozen=True)
class ParsedFeature:
    """How one declared input is read from a batch of tf.Examples by tf.io.parse_example."""

    name: str
    kind: str  # float32 | int64 | string: the tf.Example value list it is read from
    shape: tuple[int, ...]  # per example


def tfrecord_plan(decls: Iterable[InputDecl]) -> tuple[ParsedFeature, ...] | None:
    """Each input from the feature of its own name: float inputs from a float_list, integer
    inputs from an int64_list, strings from a bytes_list. None when an input cannot be read
    so: a bool (the per-record path reads it from int64 or bytes values alike) or a shape
    with an unknown dimension (examples of different lengths do not stack)."""
    plan = []
    for decl in decls:
        if decl.dtype == "bool" or None in decl.example_shape:
            return None
        kind = ("string" if decl.dtype == "string"
                else "float32" if decl.dtype.startswith("float") else "int64")
        plan.append(ParsedFeature(decl.name, kind, tuple(decl.example_shape)))  # type: ignore[arg-type]
    return tuple(plan)


def from_parsed(parsed: dict[str, np.ndarray], decls: Iterable[InputDecl]
                ) -> dict[str, np.ndarray]:
    """tf.io.parse_example's arrays (read with `tfrecord_plan`) -> the declared dtypes,
    through the per-record path's own conversion (float64; integers must stay integral)."""
    return {decl.name: parsed[decl.name] if decl.dtype == "string"
            else _numeric(parsed[decl.name], decl) for decl in decls}


def read_csv(lines: list[str], header: tuple[str, ...]) -> Any:
    """A batch of CSV lines (no header line) -> a pyarrow Table of string cells, split as
    Python's csv module splits them (quotes, doubled quotes, spaces kept)."""
    import pyarrow as pa
    from pyarrow import csv

    data = "\n".join(lines).encode()
    try:
        table = csv.read_csv(
            pa.BufferReader(data),
            read_options=csv.ReadOptions(column_names=list(header), use_threads=False,
                                         block_size=max(len(data) + 1, 1 << 20)),
            convert_options=csv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowException as err:  # a row with another number of cells, ...
        raise BatchFallback(str(err)) from None
    return _one_row_per_line(table, lines)


def read_jsonl(lines: list[str]) -> Any:
    """A batch of JSON lines -> a pyarrow Table, one column per key (a key some lines lack
    is null there)."""
    import pyarrow as pa
    from pyarrow import json

    data = "\n".join(lines).encode()
    try:
        table = json.read_json(pa.BufferReader(data), read_options=json.ReadOptions(
            use_threads=False, block_size=max(len(data) + 1, 1 << 20)))
    except pa.ArrowException as err:  # not JSON objects, values of mixed types, ...
        raise BatchFallback(str(err)) from None
    return _one_row_per_line(table, lines)


def _one_row_per_line(table: Any, lines: list[str]) -> Any:
    # The readers skip empty lines, which the per-record path reports as bad examples.
    if table.num_rows != len(lines):
        raise BatchFallback(f"{table.num_rows} rows from {len(lines)} lines")
    return table


def table_inputs(table: Any, decls: Iterable[InputDecl]) -> dict[str, np.ndarray]:
    """A batch as a pyarrow Table -> {input name: array [batch, *declared shape]}: the input
    from its own column, else from the columns x_0, x_1, ... of one value per row each (as
    examples.to_inputs reads a row)."""
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        columns[name] = column.combine_chunks()  # a repeated name: the last one, as dict()
    rows = table.num_rows
    inputs = {}
    for decl in decls:
        if decl.dtype == "bool" or None in decl.example_shape:
            raise BatchFallback(f"input {decl.name}: read record by record")
        expected = int(np.prod(decl.example_shape))
        if decl.name in columns:
            values = _fixed_count(*_cell_values(columns[decl.name], decl), expected, decl)
        elif f"{decl.name}_0" in columns:
            parts = []
            while f"{decl.name}_{len(parts)}" in columns:
                part = columns[f"{decl.name}_{len(parts)}"]
                parts.append(_fixed_count(*_cell_values(part, decl), 1, decl))
            if len(parts) != expected:
                raise BatchFallback(f"input {decl.name}: {len(parts)} columns")
            values = np.stack(parts, axis=1).reshape(-1)
        else:
            raise BatchFallback(f"input {decl.name}: no column")
        if decl.dtype == "string":
            array = values
        else:
            if values.dtype == object:  # text: Python's float(), as the per-record path reads it
                try:
                    values = values.astype(np.float64)
                except (ValueError, TypeError) as err:
                    raise BatchFallback(str(err)) from None
            array = _numeric(values, decl)
        inputs[decl.name] = array.reshape((rows, *decl.example_shape))
    return inputs


def _cell_values(column: Any, decl: InputDecl) -> tuple[np.ndarray, np.ndarray]:
    """A column's flat values and the number of values in each row, read as
    examples._flat reads one cell: a list's (nested) items; a text cell of a numeric input
    split at whitespace; any other cell as one value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise BatchFallback(f"input {decl.name}: null values")
    counts = np.ones(len(column), dtype=np.int64)
    if pa.types.is_string(column.type) and decl.dtype != "string":
        # Python's str.split() also splits at Unicode spaces and \x1c-\x1f, which Arrow's
        # ASCII split does not: such text is left to the per-record path.
        if pc.any(pc.match_substring_regex(column, r"[^\x20-\x7e\t]")).as_py():
            raise BatchFallback(f"input {decl.name}: text beyond printable ASCII")
        return _split_at_whitespace(column)
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        offsets = column.offsets.to_numpy()
        # Per row: from its first item's offset to its last's, through every list level.
        ends = np.cumsum(counts)
        counts = offsets[ends] - offsets[ends - counts]
        column = column.values
        if column.null_count:
            raise BatchFallback(f"input {decl.name}: null values")
    kind = column.type
    if decl.dtype == "string":
        if not pa.types.is_string(kind):  # numbers as text: str() of them, record by record
            raise BatchFallback(f"input {decl.name}: {kind} values")
        values = column.cast(pa.binary()).to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = column.to_numpy(zero_copy_only=False)
    elif pa.types.is_string(kind):
        values = column.to_numpy(zero_copy_only=False)  # object array of str
    else:  # booleans, objects, ...
        raise BatchFallback(f"input {decl.name}: {kind} values")
    return values, counts


def _split_at_whitespace(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """str.split() of each cell: Arrow's split also yields the empty strings before, between
    and after separators, which str.split() drops."""
    import pyarrow.compute as pc

    tokens = pc.ascii_split_whitespace(column)
    offsets = tokens.offsets.to_numpy()
    words = tokens.values.to_numpy(zero_copy_only=False)
    kept = pc.not_equal(tokens.values, "").to_numpy(zero_copy_only=False).astype(bool)
    before = np.concatenate([[0], np.cumsum(kept)])
    return words[kept], before[offsets[1:]] - before[offsets[:-1]]


def _fixed_count(values: np.ndarray, counts: np.ndarray, expected: int,
                 decl: InputDecl) -> np.ndarray:
    if not np.all(counts == expected):
        raise BatchFallback(f"input {decl.name}: another number of values than {expected}")
    return values


def _numeric(values: np.ndarray, decl: InputDecl) -> np.ndarray:
    try:
        return _numeric_array(values, decl)
    except ExampleError as err:
        raise BatchFallback(str(err)) from None
