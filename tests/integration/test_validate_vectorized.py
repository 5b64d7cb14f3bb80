"""validate's vectorized path (whole batches: one tf.io.parse_example, pyarrow's readers)
against its per-record path, on the same files, on both runners: the in-process loop and a
real Beam pipeline (DirectRunner), with real SavedModels and files written here with good and
bad records in the middle of a batch. (The runners against each other:
test_validate_in_process.py and test_validate_in_process_review.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

RECORDS = 30
BATCH = 8  # small batches: several per file, the bad records in the middle of the second
BAD = (9, 10, 11)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(5).standard_normal((RECORDS, 3)).astype(np.float32)


def tfrecord_file(path: Path, x: np.ndarray) -> Path:
    import tensorflow as tf

    def example(**features) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature=features)
                                ).SerializeToString()

    def floats(values) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    records = [example(x=floats(row)) for row in x]
    records[9] = example(id=tf.train.Feature(int64_list=tf.train.Int64List(value=[9])))
    records[10] = example(x=floats(x[10][:2]))
    records[11] = b"not an example"
    # Good records the one-step parse refuses, so their batches go record by record: the
    # split form, and integers for a float input.
    records[12] = example(**{f"x_{i}": floats([v]) for i, v in enumerate(x[12])})
    records[20] = example(x=tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2, 3])))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def csv_file(path: Path, x: np.ndarray) -> Path:
    lines = [",".join(repr(float(v)) for v in row) for row in x]
    lines[9], lines[10], lines[11] = "1,abc,3", "1,2", "1,,3"
    lines[12] = '"1.5",2,3'  # quoted: the same cell to both readers
    path.write_text("x_0,x_1,x_2\n" + "\n".join(lines) + "\n")
    return path


def jsonl_file(path: Path, x: np.ndarray) -> Path:
    lines = [json.dumps({"x": [float(v) for v in row], "id": i}) for i, row in enumerate(x)]
    lines[9], lines[10], lines[11] = (json.dumps({"x": [1, 2]}), "not json",
                                      json.dumps({"y": 1}))
    lines[12] = json.dumps({"x": " ".join(repr(float(v)) for v in x[12])})  # one text value
    lines[20] = json.dumps({"x": [[1, 2, 3]]})  # nested: flattened as the per-record path does
    path.write_text("\n".join(lines) + "\n")
    return path


MESSAGES = {
    # A record is named by the repr of its first bytes.
    "tfrecord": [r"^example \"b'.*'\": missing feature\(s\) x \(the endpoint's inputs are x: "
                 r"float32\[None, 3\]; the example has id\)$",
                 r"^example \"b'.*'\": feature x: expected 3 value\(s\) for the declared shape "
                 r"\[None, 3\], got 2$",
                 r"^example \"b'not an example'\": not a tf.Example record"],
    "csv": [r"^example '1,abc,3': feature x: cannot read \['1', 'abc', '3'\] as float32",
            r"^example '1,2': the row has 2 cells but the header names 3 columns$",
            r"^example '1,,3': feature x: expected 3 value\(s\) for the declared shape "
            r"\[None, 3\], got 2$"],
    "jsonl": [r"^example '\{\"x\": \[1, 2\]\}': feature x: expected 3 value\(s\)",
              r"^example 'not json': not a JSON object",
              r"^example '\{\"y\": 1\}': missing feature\(s\) x .*the example has y\)$"],
}
WRITERS = {"tfrecord": tfrecord_file, "csv": csv_file, "jsonl": jsonl_file}


def job_for(published: Path, models, examples: Path, fmt: str, **changes):
    """The ValidationJob `shipyard validate --source ... --against 2` builds, on model m."""
    from shipyard.repository import open_repository
    from shipyard.validation.examples import declared_inputs, examples_input
    from shipyard.validation.stages import ValidationJob

    repo = open_repository(published)
    manifest = repo.read_manifest("m", 1)
    endpoint = manifest.default_endpoint
    job = ValidationJob(
        examples=str(examples), fmt=fmt,
        csv_header=("x_0", "x_1", "x_2") if fmt == "csv" else None,
        decls=tuple(declared_inputs(manifest.signatures[endpoint])), endpoint=endpoint,
        version_dir=repo.version_location("m", 1), spec=manifest.spec,
        examples_input=examples_input(manifest.spec, endpoint),
        source=str(models.path("sequential")), against_dir=repo.version_location("m", 2),
        min_batch_size=BATCH, max_batch_size=BATCH)
    return dataclasses.replace(job, **changes)


RUNNERS = ["in-process", "DirectRunner"]


def run(job, runner: str, tmp_path: Path, *, vectorized: bool = True) -> dict:
    """The outcome of one validation run on `runner`, as steps/validate.py gets it."""
    if runner == "in-process":
        from shipyard.validation.in_process import matching_files, run_in_process

        return run_in_process(job, matching_files(job.examples), vectorized=vectorized)
    from shipyard.validation.pipeline import run_pipeline

    return run_pipeline(job, runner=runner, results_dir=str(tmp_path), vectorized=vectorized,
                        beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("fmt", ["tfrecord", "csv", "jsonl"])
def test_the_vectorized_and_the_per_record_path_find_the_same(published, models, x, tmp_path,
                                                              fmt, runner):
    path = WRITERS[fmt](tmp_path / f"examples.{fmt}", x)
    job = job_for(published, models, path, fmt)
    vectorized, per_record = (run(job, runner, tmp_path, vectorized=v) for v in (True, False))

    assert vectorized["examples"] == per_record["examples"] == RECORDS - len(BAD)
    assert vectorized["unmappable"] == per_record["unmappable"] == len(BAD)
    # Each bad record is named, with the feature and what is wrong with it.
    assert vectorized["unmappable_examples"] == per_record["unmappable_examples"]
    for message in MESSAGES[fmt]:
        assert any(re_match(message, e) for e in vectorized["unmappable_examples"]), (
            message, vectorized["unmappable_examples"])
    assert vectorized["stats"].keys() == {"parity", "agreement"}
    for comparison, outputs in per_record["stats"].items():
        for output, figures in outputs.items():
            assert vectorized["stats"][comparison][output] == pytest.approx(figures), (
                comparison, output)
    assert vectorized["stats"]["parity"]["logits"]["within"] == RECORDS - len(BAD)


def re_match(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


@pytest.mark.parametrize("fmt", ["tfrecord", "csv", "jsonl"])
def test_a_good_batch_is_mapped_in_one_step_to_what_each_record_maps_to(published, models, x,
                                                                        tmp_path, fmt):
    """The first batch is good: one step, the arrays the per-record path stacks. The second
    holds the bad records: the one step refuses it (and the pipeline maps it record by
    record)."""
    import tensorflow as tf

    from shipyard.validation.batches import BatchFallback
    from shipyard.validation.examples import batch
    from shipyard.validation.stages import BatchMapper, RecordMapper

    path = WRITERS[fmt](tmp_path / f"examples.{fmt}", x)
    if fmt == "tfrecord":
        records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    else:
        records = path.read_text().splitlines()[1 if fmt == "csv" else 0:]
    job = job_for(published, models, path, fmt)
    one_step, each = BatchMapper(job).map, RecordMapper(job).map

    mapped = one_step(records[:BATCH])
    expected = batch(each(record) for record in records[:BATCH])
    assert mapped.keys() == expected.keys() == {"x"}
    assert mapped["x"].dtype == expected["x"].dtype == np.float32
    np.testing.assert_array_equal(mapped["x"], expected["x"])
    np.testing.assert_array_equal(mapped["x"], x[:BATCH])

    refusals = {"tfrecord": r"x", "csv": r"(?i)expected 3 columns|cells|columns",
                "jsonl": r"(?i)json|parse"}
    with pytest.raises(BatchFallback, match=refusals[fmt]):
        one_step(records[BATCH:2 * BATCH])


def test_tables_map_like_rows_nested_lists_text_integers_and_strings():
    """batches.table_inputs against examples.to_inputs, row by row, on JSON layouts the
    default model does not have; and what it leaves to the per-record path."""
    from shipyard.validation.batches import BatchFallback, read_csv, read_jsonl, table_inputs
    from shipyard.validation.examples import InputDecl, batch, json_row, to_inputs

    decls = [InputDecl("m", "float64", (None, 2, 2)), InputDecl("ids", "int64", (None,)),
             InputDecl("s", "string", (None, 1)), InputDecl("v", "float32", (None, 2))]
    lines = [json.dumps({"m": [[1, 2], [3, 4.5]], "ids": 7, "s": ["é"], "v": ["1", "2e3"]}),
             json.dumps({"m": [[5, 6], [7, 8]], "ids": 2**40, "s": ["b"], "v": ["3", "4"],
                         "other": {"a": 1}})]
    mapped = table_inputs(read_jsonl(lines), decls)
    expected = batch(to_inputs(json_row(line), decls) for line in lines)
    for name, array in expected.items():
        assert mapped[name].dtype == array.dtype and mapped[name].shape == array.shape, name
        np.testing.assert_array_equal(mapped[name], array)

    header = ("v", "ids_0")
    csv_lines = ["1 2,3", " 4\t5 ,6"]  # one cell of two values; the split form of ids
    csv_decls = [InputDecl("v", "float32", (None, 2)), InputDecl("ids", "int64", (None, 1))]
    mapped = table_inputs(read_csv(csv_lines, header), csv_decls)
    np.testing.assert_array_equal(mapped["v"], [[1, 2], [4, 5]])
    np.testing.assert_array_equal(mapped["ids"], [[3], [6]])

    for table, refused, message in (
            (read_jsonl([json.dumps({"ids": 1.5})]), [decls[1]],
             r"cannot read \[1.5\] as int64 \(not an integer\)"),
            (read_jsonl([json.dumps({"ids": None})]), [decls[1]], r"input ids: null values"),
            (read_jsonl([json.dumps({"s": [1]})]), [decls[2]], r"input s: int64 values"),
            (read_csv(["1\u20072,3"], header), csv_decls,
             r"input v: text beyond printable ASCII"),
            (read_jsonl([json.dumps({"b": True})]), [InputDecl("b", "bool", (None,))],
             r"input b: read record by record")):
        with pytest.raises(BatchFallback, match=message):
            table_inputs(table, refused)
    with pytest.raises(BatchFallback, match=r"1 rows from 2 lines"):
        read_jsonl([json.dumps({"ids": 1}), ""])  # the empty line is a bad example


@pytest.mark.parametrize("runner", RUNNERS)
def test_more_bad_examples_than_are_listed_are_all_counted(published, models, tmp_path, runner):
    path = tmp_path / "mostly-bad.jsonl"
    path.write_text("".join(json.dumps({"x": [i, i]}) + "\n" for i in range(7))
                    + json.dumps({"x": [1, 2, 3]}) + "\n")
    outcome = run(job_for(published, models, path, "jsonl"), runner, tmp_path)
    assert outcome["examples"] == 1 and outcome["unmappable"] == 7
    assert len(outcome["unmappable_examples"]) == 5  # a sample of them
    assert all(re_match(r"^example '\{\"x\": \[(\d), \1\]\}': feature x: expected 3 value",
                        e) for e in outcome["unmappable_examples"])
    assert outcome["stats"]["parity"]["logits"]["examples"] == 1


@pytest.mark.parametrize("runner", RUNNERS)
def test_tfrecord_files_are_read_whole_compressed_or_not(published, models, x, tmp_path,
                                                        runner):
    """Each file is read in batches (by one DoFn on Beam); a .gz name means GZIP, as Beam's
    ReadFromTFRecord reads it."""
    import tensorflow as tf

    for part, rows in enumerate((x[:20], x[20:])):
        options = tf.io.TFRecordOptions(compression_type="GZIP" if part else None)
        name = f"part-{part}.tfrecord" + (".gz" if part else "")
        with tf.io.TFRecordWriter(str(tmp_path / name), options) as writer:
            for row in rows:
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
                    .SerializeToString())
    outcome = run(job_for(published, models, tmp_path / "part-*", "tfrecord"), runner,
                  tmp_path)
    assert outcome["examples"] == RECORDS and outcome["unmappable"] == 0
    assert outcome["stats"]["parity"]["logits"]["within"] == RECORDS
