"""The in-process runner against Beam's DirectRunner where their readers could part: carriage
returns inside a line, the compressions Beam reads text in, recursive globs and directories,
text that is not UTF-8, a sample larger than the input, and the runner's names. Real
SavedModels, real files, real Beam (its ReadFromText, its FileSystems.match)."""

from __future__ import annotations

import bz2
import json
import lzma
import re
import zlib

import numpy as np
import pytest

from integration.test_validate import kinds  # noqa: F401  (the fixture, reused here)
from integration.test_validate_in_process import same_outcome
from integration.test_validate_vectorized import job_for, run

ROWS = 12


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(17).standard_normal((ROWS, 3)).astype(np.float32)


def csv_lines(x: np.ndarray) -> list[str]:
    return [",".join(repr(float(v)) for v in row) for row in x]


def test_a_carriage_return_inside_a_line_is_kept_as_beams_readfromtext_keeps_it(
        published, models, x, tmp_path):
    """Only a \\r just before a \\n ends a line (ReadFromText). TensorFlow's GFile.readline
    drops every \\r of a line: `2\\r5` read as the number 25. A \\r at the very end of the
    file, with no \\n after it, stays on that line too."""
    lines = csv_lines(x)
    lines[3] = "0.5,2\r5,1.0"  # a \r in an unquoted cell: a bad example on Beam
    path = tmp_path / "cr.csv"
    path.write_bytes(("x_0,x_1,x_2\r\n" + "\r\n".join(lines)).encode())
    job = job_for(published, models, path, "csv", min_batch_size=5, max_batch_size=5)
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS - 1 and in_process["unmappable"] == 1
    assert in_process["unmappable_examples"] == direct["unmappable_examples"]
    assert re.match(r"^example '0\.5,2\\r5,1\.0': not a CSV row: new-line character seen",
                    in_process["unmappable_examples"][0]), in_process["unmappable_examples"]

    from shipyard.validation.in_process import _line_batches

    path.write_bytes(b"h\na\r\nb\rc\r\r\n\nd\r")
    assert [line for batch in _line_batches(str(path), 100, skip=True) for line in batch] == [
        "a", "b\rc\r", "", "d\r"]


@pytest.mark.parametrize("suffix,compress", [
    (".deflate", zlib.compress), (".zst", None), (".zstd", None), (".bz2", bz2.compress),
    (".xz", lzma.compress), (".lzma", lzma.compress)])
def test_text_compressed_as_beam_reads_it_is_read_by_its_suffix(published, models, x, tmp_path,
                                                                 suffix, compress):
    """The suffixes Beam's ReadFromText decompresses (CompressionTypes.AUTO): the runners
    see the same examples, never the compressed bytes as text."""
    if compress is None:
        import zstandard

        compress = zstandard.ZstdCompressor().compress
    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    path = tmp_path / f"e.jsonl{suffix}"
    path.write_bytes(compress(("\n".join(lines) + "\n").encode()))
    job = job_for(published, models, path, "jsonl", min_batch_size=5, max_batch_size=5)
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS and in_process["unmappable"] == 0

    # A CSV header is read through the same decompression.
    from shipyard.validation.in_process import first_line

    header = tmp_path / f"h.csv{suffix}"
    header.write_bytes(compress(b"x_0,x_1,x_2\r\n1,2,3\n"))
    assert first_line(str(header)) == "x_0,x_1,x_2"


def test_a_zlib_text_file_is_read_as_the_readme_says(published, models, x, tmp_path):
    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    path = tmp_path / "e.jsonl.zlib"
    path.write_bytes(zlib.compress("\n".join(lines).encode()))
    outcome = run(job_for(published, models, path, "jsonl"), "in-process", tmp_path)
    assert outcome["examples"] == ROWS and outcome["unmappable"] == 0


def test_globs_match_the_files_beam_matches(published, models, x, tmp_path):
    """`**` crosses directories on Beam (FileSystem.translate_pattern); TensorFlow's glob
    takes it for `*` and matched a directory level only, so files were left out without a
    word. A trailing / means the directory's files, as on Beam. Directories are never files."""
    from shipyard.validation import pipeline
    from shipyard.validation.in_process import matching_files

    root = tmp_path / "data"
    (root / "day=1" / "hour=2").mkdir(parents=True)
    (root / "empty-dir.jsonl").mkdir()
    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    for name, part in (("a.jsonl", lines[:4]), ("day=1/b.jsonl", lines[4:8]),
                       ("day=1/hour=2/c.jsonl", lines[8:]), ("day=1/notes.txt", ["{}"])):
        (root / name).write_text("\n".join(part) + "\n")
    for pattern in (f"{root}/**", f"{root}/**.jsonl", f"{root}/**/*.jsonl", f"{root}/*",
                    f"{root}/", f"{root}/day=1/", f"{root}/d*/*/c.jsonl", f"{root}/?.jsonl",
                    f"{root}/[ab].jsonl", f"{root}/*.jsonl"):
        assert matching_files(pattern) == pipeline.matching_files(pattern), pattern

    job = job_for(published, models, f"{root}/**.jsonl", "jsonl")
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS


def test_a_directory_given_as_the_pattern_is_refused_with_the_fix(tmp_path):
    from shipyard.core.errors import UsageError
    from shipyard.validation.in_process import matching_files

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    with pytest.raises(UsageError, match=r"examples .*/data: a directory, not a file; pass "
                                         r"'.*/data/\*' for its files, or '.*/data/\*\*' with "
                                         r"its subdirectories'"):
        matching_files(str(tmp_path / "data"))


def test_text_that_is_not_utf8_is_refused_naming_the_file_and_the_line(published, models, x,
                                                                      tmp_path):
    from shipyard.core.errors import UsageError
    from shipyard.validation.in_process import first_line

    path = tmp_path / "latin.csv"
    lines = csv_lines(x)
    path.write_bytes(("x_0,x_1,x_2\n" + "\n".join(lines[:2])).encode()
                     + "\n1,2,3,caf\u00e9\n".encode("latin-1"))
    job = job_for(published, models, path, "csv")
    with pytest.raises(UsageError, match=r"examples: .*latin.csv line 4 is not UTF-8 text "
                                         r"\(.* at byte 9\); save the file as UTF-8"):
        run(job, "in-process", tmp_path)

    header = tmp_path / "header.csv"
    header.write_bytes("caf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"examples: .*header.csv line 1 is not UTF-8 text"):
        first_line(str(header))


def test_a_sample_larger_than_the_input_holds_only_the_input(published, models, x, tmp_path):
    """`--sample K` holds at most K examples, and no more than were read: a K far above the
    input (every example, once) allocated K rows up front (11 TiB here, a MemoryError)."""
    from shipyard.validation.in_process import _Reservoir

    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job = job_for(published, models, path, "jsonl", sample=10**12)
    in_process, direct = run(job, "in-process", tmp_path), run(job, "DirectRunner", tmp_path)
    same_outcome(in_process, direct)
    assert in_process["examples"] == ROWS

    reservoir = _Reservoir(10**9)
    for start in range(0, 1000, 100):
        reservoir.add({"id": np.arange(start, start + 100)})
    assert reservoir.rows is not None and reservoir.rows["id"].nbytes <= 2 * 1000 * 8
    (kept,) = list(reservoir.batches(10**6))
    assert kept["id"].tolist() == list(range(1000))


def test_the_runner_is_named_in_process_however_it_is_spelled(cli, published, tmp_path, x):
    lines = [json.dumps({"x": [float(v) for v in row]}) for row in x]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for name in ("In-Process", "in_process", "InProcess"):
        result = cli("validate", "--repo", str(published), "--name", "m", "--version", "1",
                     "--examples", str(path), "--against", "2", "--runner", name, "--json",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert result.exit_code == 0, (name, result.stderr)
        assert json.loads(result.stdout)["runner"] == "in-process", name
    result = cli("validate", "--repo", str(published), "--name", "m", "--version", "1",
                 "--examples", str(path), "--against", "2", "--runner", "inproc")
    assert result.exit_code == 2
    assert re.search(r"--runner 'inproc': not a Beam runner; pass one of Beam's registered "
                     r"names .*; or in-process \(the default: this process, without Beam\)",
                     result.stderr), result.stderr


@pytest.mark.parametrize("file", ["examples.tfrecord", "examples.csv", "examples.jsonl"])
def test_a_classify_endpoint_of_tf_examples_finds_the_same_on_both_runners(
        cli, models, tmp_path, file,
        kinds):  # noqa: F811  (the fixture imported above)
    """String features, serialized tf.Examples fed as they are or built from rows, top-1 class
    agreement: the default runner against the DirectRunner, on the same files plus one bad
    record (listed alike by both)."""
    from integration.test_validate_portable import same_figures

    repo, root, _ = kinds
    examples = tmp_path / file
    if file.endswith(".tfrecord"):
        import tensorflow as tf

        with tf.io.TFRecordWriter(str(examples)) as writer:
            for record in tf.data.TFRecordDataset(str(root / file)):
                writer.write(record.numpy())
            writer.write(b"not an example")
    else:
        examples.write_text((root / file).read_text()
                            + ("1,2,x,red,1\n" if file.endswith(".csv") else "not json\n"))
    documents = {}
    for runner in ("in-process", "DirectRunner"):
        result = cli("validate", "--repo", str(repo), "--name", "v", "--version", "1",
                     "--endpoint", "classify", "--examples", str(examples), "--source",
                     str(models.path("functional")), "--against", "2", "--runner", runner,
                     "--json", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert result.exit_code == 2, result.stderr
        assert "1 example(s) do not map onto endpoint 'classify'" in result.stderr
        documents[runner] = result.stderr.split("example(s) do not map", 1)[1]
    assert documents["in-process"] == documents["DirectRunner"]

    examples.write_bytes((root / file).read_bytes())  # the good examples only
    for args in ([], ["--sample", "1000"]):
        for runner in ("in-process", "DirectRunner"):
            result = cli("validate", "--repo", str(repo), "--name", "v", "--version", "1",
                         "--endpoint", "classify", "--examples", str(examples), "--source",
                         str(models.path("functional")), "--against", "2", "--runner",
                         runner, "--json", "--tracking-uri",
                         f"sqlite:///{tmp_path / 'mlflow.db'}", *args)
            assert result.exit_code == 0, result.stderr
            documents[runner] = json.loads(result.stdout)
        assert documents["in-process"]["runner"] == "in-process"
        assert same_figures(documents["in-process"], documents["DirectRunner"],
                            ignore=("runner", "time")), documents


def test_a_sample_keeps_serialized_examples_byte_for_byte_on_both_runners(cli, models, tmp_path,
                                                                        kinds):  # noqa: F811
    """On Beam, `--sample` unbatches the examples and stacks them again: numpy stacked the
    serialized tf.Examples (bytes) into a fixed-width bytes array, which drops trailing NUL
    bytes, and a record whose last float is 0.0 ends in four of them. The model's parser then
    failed on the cut record (an InvalidArgumentError, or a UnicodeDecodeError when
    TensorFlow's message about it held bytes that are not UTF-8)."""
    import tensorflow as tf

    from integration.test_validate_portable import same_figures

    repo, _, _ = kinds
    examples = tmp_path / "zeros.tfrecord"
    with tf.io.TFRecordWriter(str(examples)) as writer:
        for i in range(10):
            example = tf.train.Example()  # one feature (color has a default): x1 last
            example.features.feature["x1"].float_list.value.extend([0.5 * i, 0.25, 0.0])
            record = example.SerializeToString()
            assert record.endswith(b"\0\0\0\0")
            writer.write(record)
    documents = {}
    for runner in ("in-process", "DirectRunner"):
        result = cli("validate", "--repo", str(repo), "--name", "v", "--version", "1",
                     "--endpoint", "classify", "--examples", str(examples), "--source",
                     str(models.path("functional")), "--against", "2", "--runner", runner,
                     "--sample", "1000", "--json", "--tracking-uri",
                     f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert result.exit_code == 0, (runner, result.stderr[-2000:])
        documents[runner] = json.loads(result.stdout)
    assert documents["in-process"]["examples"] == 10
    assert same_figures(documents["in-process"], documents["DirectRunner"],
                        ignore=("runner", "time")), documents


def test_unbatched_examples_stack_back_to_the_same_values():
    from shipyard.validation.examples import batch
    from shipyard.validation.stages import unbatch

    inputs = {"inputs": np.array([b"ab\0\0", b"c", b""], dtype=object),
              "x": np.arange(6, dtype=np.float32).reshape(3, 2)}
    again = batch(unbatch(inputs))
    assert again["inputs"].dtype == object and again["inputs"].tolist() == [b"ab\0\0", b"c", b""]
    assert again["x"].dtype == np.float32 and again["x"].tolist() == inputs["x"].tolist()


@pytest.mark.parametrize("name,data", [
    ("plain.csv.gz", b"x_0,x_1,x_2\n1,2,3\n"),  # named .gz, not compressed
    ("cut.csv.gz", None),  # compressed, cut short
    ("plain.csv.bz2", b"x_0,x_1,x_2\n1,2,3\n"), ("plain.csv.xz", b"x_0,x_1,x_2\n1,2,3\n"),
    ("plain.csv.deflate", b"x_0,x_1,x_2\n1,2,3\n"), ("plain.csv.zst", b"x_0,x_1,x_2\n1,2,3\n")])
def test_a_text_file_that_does_not_decompress_is_named(published, models, tmp_path, name, data):
    import gzip

    from shipyard.core.errors import UsageError
    from shipyard.validation.in_process import first_line

    if data is None:
        data = gzip.compress(b"x_0,x_1,x_2\n" + b"".join(
            b"%d,%d,%d\n" % (i, i * 7, i * 13) for i in range(20000)))[:-100]
    path = tmp_path / name
    path.write_bytes(data)
    message = (rf"examples: .*{re.escape(name)} is not a readable "
               rf"{re.escape(name.rsplit('.', 1)[1])} file \(.+\); check the file, or rename it")
    if name.startswith("cut"):  # the header reads: the reader thread meets the cut
        with pytest.raises(UsageError, match=message):
            run(job_for(published, models, path, "csv"), "in-process", tmp_path)
    else:
        with pytest.raises(UsageError, match=message):
            first_line(str(path))
