"""`shipyard validate`: real Apache Beam DirectRunner pipelines over TFRecord, CSV and JSONL
files written here, against exported versions of the test models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from shipyard.flow import ExportRequest, export_model
from shipyard.manifest import list_files
from shipyard.spec import parse_spec

pytestmark = pytest.mark.integration

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}
ROWS = 40


@pytest.fixture(scope="module")
def published(models, launcher, tmp_path_factory):
    """Repository with version 1 (sequential) and version 2 (sequential_tanh: the same
    weights, another activation, standing in for a retrained champion)."""
    repo = tmp_path_factory.mktemp("validate") / "repo"
    for kind in ("sequential", "sequential_tanh"):
        export_model(ExportRequest(model=models.path(kind), spec=parse_spec(SPEC), repo=repo,
                                   name="v"), launch_verifier=launcher)
    return repo


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The same ROWS examples as TFRecord (tf.Example), CSV (one column per value) and JSONL."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("examples")
    x = np.random.default_rng(7).standard_normal((ROWS, 3)).astype(np.float32)
    np.save(root / "x.npy", x)
    with tf.io.TFRecordWriter(str(root / "part-0.tfrecord")) as writer:
        for row in x:
            example = tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
            writer.write(example.SerializeToString())
    half = ROWS // 2  # two CSV files: each has its header
    for part, rows in enumerate((x[:half], x[half:])):
        lines = ["x_0,x_1,x_2"] + [",".join(repr(float(v)) for v in row) for row in rows]
        (root / f"part-{part}.csv").write_text("\n".join(lines) + "\n")
    (root / "part-0.jsonl").write_text(
        "".join(json.dumps({"x": [float(v) for v in row], "id": i}) + "\n"
                for i, row in enumerate(x)))
    return root


def perturbed_model(models, tmp_path: Path) -> Path:
    import keras

    model = keras.saving.load_model(models.path("sequential"))
    kernel = model.layers[-1].kernel
    kernel.assign(kernel.numpy() + 0.05)
    path = tmp_path / "perturbed.keras"
    model.save(path)
    return path


def validate(cli, repo: Path, *args: str):
    result = cli("validate", "--repo", str(repo), "--name", "v", *args, "--json")
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


@pytest.mark.parametrize("pattern", ["part-*.tfrecord", "part-*.csv", "part-0.jsonl"])
def test_a_faithful_export_passes_parity_on_every_format(cli, published, examples, models,
                                                         tmp_path, pattern):
    before = list_files(published / "v" / "1")
    result, doc = validate(cli, published, "--version", "1", "--examples",
                           str(examples / pattern), "--source", str(models.path("sequential")),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.exit_code == 0, result.stderr
    assert doc["examples"] == ROWS and doc["passed"] and doc["failures"] == []
    parity = doc["parity"]["logits"]
    assert parity["within_tolerance"] == 1.0 and parity["max_abs_error"] <= 1e-5
    assert doc["logged_to_run"] is None  # exported, not registered: nothing to log to
    assert list_files(published / "v" / "1") == before  # the version stays immutable


def test_a_perturbed_weight_fails_parity_with_exit_8(cli, published, examples, models,
                                                     tmp_path):
    output = tmp_path / "results.json"
    result, doc = validate(cli, published, "--version", "1", "--examples",
                           str(examples / "part-0.jsonl"), "--source",
                           str(perturbed_model(models, tmp_path)), "--output", str(output),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.exit_code == 8, result.stderr
    assert "validation gates failed" in result.stderr and "parity logits" in result.stderr
    assert doc["passed"] is False and doc["parity"]["logits"]["max_abs_error"] > 0.01
    assert json.loads(output.read_text()) == doc
    loose, loose_doc = validate(cli, published, "--version", "1", "--examples",
                                str(examples / "part-0.jsonl"), "--source",
                                str(tmp_path / "perturbed.keras"), "--max-abs-error", "10",
                                "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert loose.exit_code == 0, loose.stderr
    assert loose_doc["passed"]


def test_agreement_with_the_champion_is_reported_and_logged_on_the_run(cli, published,
                                                                       examples, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("v")
    runs = {}
    for version in (1, 2):  # registry set-up as `shipyard register` leaves it
        run = client.create_run(client.create_experiment(f"e{version}"))
        runs[version] = run.info.run_id
        client.create_model_version("v", source=str(published / "v" / str(version)),
                                    run_id=run.info.run_id)
    client.set_registered_model_alias("v", "champion", "2")

    result, doc = validate(cli, published, "--version", "1", "--examples",
                           str(examples / "part-*.csv"), "--against", "champion",
                           "--min-agreement", "0.5", "--sample", "25", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    assert doc["against"] == 2 and doc["examples"] == 25
    agreement = doc["agreement"]["logits"]
    assert 0.5 <= agreement["top1_agreement"] <= 1.0
    assert agreement["mean_abs_error"] > 0  # relu and tanh differ
    assert doc["logged_to_run"] == runs[1]
    metrics = client.get_run(runs[1]).data.metrics
    assert metrics["validation.agreement.logits.top1_agreement"] == \
        agreement["top1_agreement"]
    artifacts = [a.path for a in client.list_artifacts(runs[1], "validation")]
    assert len(artifacts) == 1 and artifacts[0].endswith(".json")


def test_bad_examples_and_arguments_exit_2_naming_the_problem(cli, published, examples,
                                                              tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"y": [1, 2, 3]}) + "\n" + json.dumps({"x": [1, 2]}) + "\n")
    result, _ = validate(cli, published, "--version", "1", "--examples", str(wrong),
                         "--against", "2")
    assert result.exit_code == 2
    assert "2 example(s) do not map onto endpoint 'serve' of v version 1" in result.stderr
    assert "missing feature(s) x" in result.stderr and "the example has y" in result.stderr
    assert "feature x: expected 3 value(s) for the declared shape [None, 3], got 2" in \
        result.stderr

    for args, message in (
            (["--examples", str(tmp_path / "none-*.csv"), "--against", "2"], "no file matches"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "7"],
             "--against 7: .* is not a published version of v"),
            (["--examples", str(examples / "part-0.jsonl")],
             "nothing to compare: pass --source MODEL .* and/or --against"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2", "--min-agreemnt",
              "0.9"], "No such option '--min-agreemnt'"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2", "--runner",
              "DataflowRunner", "--", "--project", "p"],
             "--runner DataflowRunner: pass -- --temp_location URL"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "latest"],
             "--against: expected 'champion' or a version number, got 'latest'"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2",
              "--min-agreement", "2"],
             "--min-agreement: expected a share between 0 and 1, got 2.0"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2",
              "--endpoint", "embed"],
             "--endpoint: the version has no endpoint 'embed'; it has serve"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2",
              "--min-agreement", "0.9", "--agreement-output", "probs"],
             "--agreement-output probs: endpoint 'serve' has no such output; its outputs are "
             "logits"),
            (["--examples", str(examples / "part-0.jsonl"), "--against", "2",
              "--agreement-output", "logits"],
             "--agreement-output names the outputs the agreement gate covers; pass "
             "--min-agreement too")):
        result, _ = validate(cli, published, "--version", "1", *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert re.search(message, result.stderr), (message, result.stderr)

    other = tmp_path / "other-order.csv"
    other.write_text("x_2,x_1,x_0\n1,2,3\n")
    shutil.copy(examples / "part-0.csv", tmp_path / "first.csv")
    result, _ = validate(cli, published, "--version", "1", "--examples",
                         str(tmp_path / "*.csv"), "--against", "2")
    assert result.exit_code == 2
    assert re.search(r"other-order.csv has the header x_2,x_1,x_0 but .*first.csv has "
                     r"x_0,x_1,x_2", result.stderr)


def test_agreement_below_the_minimum_fails_with_exit_8(cli, published, examples, models):
    import keras

    x = np.load(examples / "x.npy")
    top1 = [np.asarray(keras.saving.load_model(models.path(kind))(x)).argmax(-1)
            for kind in ("sequential", "sequential_tanh")]
    expected = float((top1[0] == top1[1]).mean())
    assert expected < 1.0  # relu and tanh disagree on some of these rows
    result, doc = validate(cli, published, "--version", "1", "--examples",
                           str(examples / "part-0.tfrecord"), "--against", "2",
                           "--min-agreement", str(expected + 0.01))
    assert result.exit_code == 8, result.stderr
    assert doc["agreement"]["logits"]["top1_agreement"] == pytest.approx(expected)
    assert f"agreement logits: {doc['agreement']['logits']['top1_agreement']} < " \
        "--min-agreement" in result.stderr
