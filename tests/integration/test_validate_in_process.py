"""validate's default in-process runner (validation/in_process.py): the same outcome as Beam's
DirectRunner on files whose reading differs between the two (line endings, compression, many
files, sampling), and its own refusals. Real SavedModels, real files, a real Beam pipeline to
compare with."""

from __future__ import annotations

import gzip
import json
import re
import threading

import numpy as np
import pytest

from integration.test_validate_vectorized import job_for, run

ROWS = 25


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(11).standard_normal((ROWS, 3)).astype(np.float32)


def same_outcome(a: dict, b: dict) -> None:
    assert a["examples"] == b["examples"] and a["unmappable"] == b["unmappable"]
    assert a["stats"].keys() == b["stats"].keys()
    for comparison, outputs in a["stats"].items():
        for output, figures in outputs.items():
            assert b["stats"][comparison][output] == pytest.approx(figures), (comparison, output)


def test_text_files_are_read_line_for_line_as_beams_readfromtext_reads_them(published, models,
                                                                         x, tmp_path):
    """CRLF endings, no newline after the last line, a blank line (a bad example on both), a
    gzip file, a CSV header in every file: the runners see the same examples."""
    rows = [",".join(repr(float(v)) for v in row) for row in x]
    (tmp_path / "a.csv").write_bytes(("x_0,x_1,x_2\r\n" + "\r\n".join(rows[:10])).encode())
    with gzip.open(tmp_path / "b.csv.gz", "wb") as f:
        f.write(("x_0,x_1,x_2\n" + "\n".join(rows[10:]) + "\n\n").encode())
    job = job_for(published, models, tmp_path / "*.csv*", "csv", min_batch_size=4,
                  max_batch_size=4)
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS and in_process["unmappable"] == 1
    assert in_process["unmappable_examples"] == direct["unmappable_examples"] == [
        "example '': the row has 0 cells but the header names 3 columns"]
    assert in_process["stats"]["parity"]["logits"]["within"] == ROWS

    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    (tmp_path / "c.jsonl").write_text("\r\n".join(lines))
    job = job_for(published, models, tmp_path / "c.jsonl", "jsonl", min_batch_size=7,
                  max_batch_size=7)
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS and in_process["unmappable"] == 0


def test_a_sample_is_k_distinct_examples_on_both_runners(published, models, x, tmp_path):
    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    (tmp_path / "e.jsonl").write_text("\n".join(lines) + "\n")
    job = job_for(published, models, tmp_path / "e.jsonl", "jsonl", sample=10,
                  max_batch_size=4, min_batch_size=4)
    for runner in ("in-process", "DirectRunner"):
        outcome = run(job, runner, tmp_path)
        assert outcome["examples"] == 10, runner
        assert outcome["stats"]["parity"]["logits"]["within"] == 10, runner
    everything = run(job_for(published, models, tmp_path / "e.jsonl", "jsonl", sample=1000),
                     "in-process", tmp_path)
    assert everything["examples"] == ROWS  # K above the count: every example, once


def test_the_reservoir_keeps_a_uniform_sample_of_distinct_examples():
    """Every example has the same chance, K / N, whatever the batch it came in: 4,000 draws of
    5 out of 40 examples (in batches of 7, so that two examples of a batch compete for a
    slot), each example kept 500 times on average."""
    from shipyard.validation.in_process import _Reservoir

    rng = np.random.default_rng(0)
    kept = np.zeros(40, int)
    for _ in range(4000):
        reservoir = _Reservoir(5, rng)
        for start in range(0, 40, 7):
            reservoir.add({"id": np.arange(start, min(start + 7, 40))})
        (sample,) = list(reservoir.batches(100))
        ids = sample["id"]
        assert len(ids) == 5 and len(set(ids.tolist())) == 5
        kept[ids] += 1
    # Binomial(4000, 1/8): standard deviation about 21; 5 of them either way is far outside.
    assert np.abs(kept - 500).max() < 105, kept
    # The first batch's and the last batch's examples alike.
    assert abs(kept[:7].mean() - kept[-5:].mean()) < 60, kept


def test_a_corrupt_tfrecord_file_is_named(published, models, x, tmp_path):
    from integration.test_validate_vectorized import tfrecord_file
    from shipyard.core.errors import UsageError

    path = tfrecord_file(tmp_path / "cut.tfrecord", x)
    path.write_bytes(path.read_bytes()[:-7])  # the last record cut short
    job = job_for(published, models, path, "tfrecord")
    with pytest.raises(UsageError, match=r"examples: .*cut.tfrecord is not a readable TFRecord "
                                         r"file: .*truncated"):
        run(job, "in-process", tmp_path)
    assert not reading_threads()  # the reader stopped with the error


def test_a_failed_model_load_stops_the_reader(published, models, x, tmp_path):
    from integration.test_validate_vectorized import tfrecord_file

    path = tfrecord_file(tmp_path / "many.tfrecord", np.tile(x, (20, 1)))
    job = job_for(published, models, path, "tfrecord", max_batch_size=2,
                  source=str(tmp_path / "gone.keras"))
    with pytest.raises(Exception, match=r"gone.keras"):
        run(job, "in-process", tmp_path)
    assert not reading_threads()


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shipyard-validate-read"]


def test_files_the_in_process_runner_cannot_read_are_refused_with_the_fix(tmp_path):
    from shipyard.core.errors import UsageError
    from shipyard.validation.in_process import _tfrecord_batches, matching_files

    with pytest.raises(UsageError, match=r"examples nosuch://bucket/\*.tfrecord: cannot list "
                                         r"matching files: .*pass --runner DirectRunner"):
        matching_files("nosuch://bucket/*.tfrecord")
    with pytest.raises(UsageError, match=r"examples .*/none-\*: no file matches"):
        matching_files(str(tmp_path / "none-*"))
    (tmp_path / "e.tfrecord.bz2").write_bytes(b"")
    with pytest.raises(UsageError, match=r"e.tfrecord.bz2: the in-process runner reads TFRecord "
                                         r"files uncompressed or compressed as .deflate, .gz, "
                                         r".zlib; pass --runner DirectRunner"):
        next(_tfrecord_batches(str(tmp_path / "e.tfrecord.bz2"), 8))


def test_beam_options_and_a_bad_batch_size_are_usage_errors(cli, tmp_path):
    for args, message in (
            (["--", "--direct_num_workers=2"],
             r"runner in-process takes no Beam pipeline options \(given: "
             r"--direct_num_workers=2\); pass --runner DirectRunner"),
            (["--batch-size", "0"], r"Invalid value for '--batch-size': 0 is not in the range "
                                    r"x>=1")):
        result = cli("validate", "--repo", str(tmp_path), "--name", "m", "--version", "1",
                     "--examples", str(tmp_path / "e.jsonl"), "--against", "2", *args)
        assert result.exit_code == 2, result.output
        assert re.search(message, result.stderr), result.stderr


def test_the_in_process_runner_does_not_import_beam(published, models, x, tmp_path):
    """Its point: no Beam start-up. In a fresh interpreter, a whole validation leaves
    apache_beam unimported."""
    import subprocess
    import sys

    from integration.test_validate_vectorized import tfrecord_file

    path = tfrecord_file(tmp_path / "e.tfrecord", x)
    script = f"""
import sys
from pathlib import Path
from shipyard.repository import open_repository
from shipyard.steps.validate import ValidateRequest, validate_version_on_examples
request = ValidateRequest(name="m", version=1, examples={str(path)!r}, against="2")
try:
    validate_version_on_examples(open_repository(Path({str(published)!r})), request,
                                 read_aliases=lambda name: {{}})
except Exception as err:
    print(type(err).__name__, err)
print("beam imported:", any(m == "apache_beam" or m.startswith("apache_beam.")
                            for m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert "beam imported: False" in done.stdout, (done.stdout, done.stderr[-3000:])
    assert "UsageError" in done.stdout and "3 example(s) do not map" in done.stdout, done.stdout


def test_parity_is_measured_against_keras_own_load_not_the_optimized_one(published, tmp_path):
    """The parity reference must not share the code path that may have produced the export:
    for a model whose weight is read inside a tf.function in build()
    (support/build_time_reads.py), shipyard's optimized load answers otherwise than Keras's
    own (garbage from an unfilled variable; test_independent_reference.py). validate's
    reference answers as keras.saving.load_model does: x * 3 + 6."""
    import tensorflow as tf
    from support.build_time_reads import ReadsInFunction, saved_model_with
    from support.specs import SEQUENTIAL_SPEC

    from shipyard.core.spec import parse_spec
    from shipyard.repository import open_repository
    from shipyard.validation.stages import LoadedModels, ValidationJob

    source = saved_model_with(ReadsInFunction(), tmp_path / "in-function.keras")
    job = ValidationJob(examples="", fmt="jsonl", csv_header=None, decls=(), endpoint="serve",
                        version_dir=open_repository(published).version_location("m", 1),
                        spec=parse_spec(SEQUENTIAL_SPEC).normalized(), source=str(source))
    x = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, -1.0], [3.0, 0.5, 2.0]], np.float32)
    (answered,) = LoadedModels(job).source(tf.constant(x)).values()  # the endpoint's outputs
    np.testing.assert_allclose(np.asarray(answered), x * 3.0 + 6.0, atol=1e-6)
