"""`shipyard validate`: its default in-process runner over TFRecord, CSV and JSONL
files written here, against exported versions of the test models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.specs import COLORS, FEATURES

from shipyard.core.manifest import list_files
from shipyard.core.spec import parse_spec
from shipyard.steps.export import ExportRequest, export_model

ROWS = 40


@pytest.fixture(scope="module")
def published(published, tmp_path_factory):
    """The session's published versions (tests/conftest.py) copied as model `v`: version 1
    (sequential) and version 2 (sequential_tanh: the same weights, another activation,
    standing in for a retrained champion)."""
    repo = tmp_path_factory.mktemp("validate") / "repo"
    shutil.copytree(published / "m", repo / "v")
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


def test_tfrecord_features_are_read_by_name_beside_others_or_split(published, examples, models,
                                                                   tmp_path):
    """Records carry more features than the endpoint reads (only the declared ones are
    decoded), or the split form x_0, x_1, x_2; a record without x is listed with what it
    has."""
    import tensorflow as tf

    from shipyard.core.errors import UsageError
    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    x = np.load(examples / "x.npy")

    def write(path: Path, records: list[dict]) -> Path:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for features in records:
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=features)).SerializeToString())
        return path

    def floats(values) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    extra = {"id": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
             "note": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"n"]))}
    good = write(tmp_path / "good.tfrecord",
                 [{"x": floats(row), **extra} for row in x[:10]]
                 + [{f"x_{i}": floats([v]) for i, v in enumerate(row)} for row in x[10:20]])

    def run(path: Path):
        return validate_version_on_examples(
            open_repository(published), ValidateRequest(
                name="v", version=1, examples=str(path), source=models.path("sequential")),
            read_aliases=lambda name: None)

    doc = run(good)
    assert doc.examples == 20 and doc.passed, doc.to_json()
    assert doc.parity["logits"]["max_abs_error"] <= 1e-5

    bad = write(tmp_path / "bad.tfrecord", [{"x": floats(x[0])}, extra])
    with pytest.raises(UsageError, match=(
            r"1 example\(s\) do not map onto endpoint 'serve' of v version 1:\n.*missing "
            r"feature\(s\) x \(the endpoint's inputs are x: float32\[None, 3\]; the example "
            r"has id, note\)")):
        run(bad)


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


# ---- endpoints of serialized tf.Examples (tf_example inputs, kind classify) --------------------

EXAMPLE_ROWS = 24


def tf_example_spec() -> dict:
    """Local, not support.specs.kinds_spec: these tests validate a predict and a classify
    endpoint, with `serve` (the first) as the default endpoint; kinds_spec adds a regress
    endpoint and makes classify the default."""
    return {"endpoints": [
        {"name": "serve", "method": "call",
         "inputs": [{"name": "examples", "tf_example": FEATURES}]},
        {"name": "classify", "kind": "classify", "method": "call", "output": "probs",
         "classes": list(COLORS), "inputs": [{"tf_example": FEATURES}]}]}


@pytest.fixture(scope="module")
def kinds(models, launcher, tmp_path_factory):
    """Version 1: the functional model; version 2: the same with noise on the probs layer's
    kernel, a challenger that names another top-1 class on some examples. Plus the examples
    as TFRecord, CSV and JSONL, and what Keras itself answers on them."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("kinds")
    challenger = keras.saving.load_model(models.path("functional"))
    kernel = challenger.get_layer("probs").kernel
    kernel.assign(kernel.numpy() + np.random.default_rng(3).normal(
        0, 0.5, kernel.shape).astype(np.float32))
    challenger.save(root / "challenger.keras")
    repo = root / "repo"
    for path in (models.path("functional"), root / "challenger.keras"):
        export_model(ExportRequest(model=path, spec=parse_spec(tf_example_spec()), repo=repo,
                                   name="v"), launch_verifier=launcher)

    rng = np.random.default_rng(11)
    x1 = rng.standard_normal((EXAMPLE_ROWS, 3)).astype(np.float32)
    colors = [COLORS[i] for i in rng.integers(0, len(COLORS), EXAMPLE_ROWS)]
    colors[::5] = [""] * len(colors[::5])  # left out below: the declared default "" applies
    with tf.io.TFRecordWriter(str(root / "examples.tfrecord")) as writer:
        for row, color in zip(x1, colors):
            example = tf.train.Example()
            example.features.feature["x1"].float_list.value.extend(row)
            if color:
                example.features.feature["color"].bytes_list.value.append(color.encode())
            example.features.feature["label"].int64_list.value.append(1)  # not declared
            writer.write(example.SerializeToString())
    lines = ["x1_0,x1_1,x1_2,color,label"] + [
        ",".join([*(repr(float(v)) for v in row), color, "1"]) for row, color in zip(x1, colors)]
    (root / "examples.csv").write_text("\n".join(lines) + "\n")
    (root / "examples.jsonl").write_text("".join(
        json.dumps({"x1": [float(v) for v in row], **({"color": color} if color else {}),
                    "id": i}) + "\n" for i, (row, color) in enumerate(zip(x1, colors))))

    features = {"x1": tf.constant(x1), "color": tf.constant([[c] for c in colors])}
    answers = [model(features) for model in (
        keras.saving.load_model(models.path("functional")), challenger)]
    top1 = [np.asarray(COLORS)[np.asarray(a["probs"]).argmax(-1)] for a in answers]
    expected = {"top1_agreement": float((top1[0] == top1[1]).mean()),
                "scores_mean_abs": float(np.abs(np.asarray(answers[0]["probs"])
                                                - np.asarray(answers[1]["probs"])).mean())}
    assert 0 < expected["top1_agreement"] < 1  # the challenger disagrees on some examples
    return repo, root, expected


@pytest.mark.parametrize("file", ["examples.tfrecord", "examples.csv", "examples.jsonl"])
def test_a_classify_endpoint_validates_alike_from_tfrecord_csv_and_jsonl(cli, kinds, models,
                                                                          file):
    """Records go in as they are, rows are serialized with the feature spec: the same
    examples give the same figures, and those are what Keras answers."""
    repo, root, expected = kinds
    result, doc = validate(cli, repo, "--version", "1", "--endpoint", "classify",
                           "--examples", str(root / file), "--source",
                           str(models.path("functional")), "--against", "2",
                           "--min-agreement", str(expected["top1_agreement"]))
    assert result.exit_code == 0, result.stderr
    assert doc["examples"] == EXAMPLE_ROWS and doc["passed"] and doc["failures"] == []
    assert doc["parity"]["scores"]["within_tolerance"] == 1.0
    assert doc["parity"]["classes"]["top1_agreement"] == 1.0
    agreement = doc["agreement"]
    assert agreement["classes"]["top1_agreement"] == pytest.approx(expected["top1_agreement"])
    assert agreement["scores"]["mean_abs_error"] == pytest.approx(expected["scores_mean_abs"],
                                                                  rel=1e-4)
    # Both versions list the same labels on every row: only the top-1 label can disagree.
    assert agreement["classes"]["within_tolerance"] == 1.0
    # The gate covers `classes` by default: the challenger's scores are nowhere near the
    # export tolerance, yet the run passes.
    assert doc["thresholds"]["agreement_outputs"] == ["classes"]
    assert agreement["scores"]["within_tolerance"] < expected["top1_agreement"]


def test_top1_class_agreement_gates_classify_and_predict_over_examples_keeps_its_gate(
        cli, kinds, models):
    repo, root, expected = kinds
    result, doc = validate(cli, repo, "--version", "1", "--endpoint", "classify",
                           "--examples", str(root / "examples.csv"), "--against", "2",
                           "--min-agreement", str(expected["top1_agreement"] + 0.01))
    assert result.exit_code == 8, result.stderr
    assert doc["failures"] == [
        f"agreement classes: {doc['agreement']['classes']['top1_agreement']} < "
        f"--min-agreement {expected['top1_agreement'] + 0.01:g}"]

    # A predict endpoint over tf.Examples: the examples feed its declared input `examples`,
    # parity and agreement per output as for plain tensors (top-1 of probs, all outputs gated).
    result, doc = validate(cli, repo, "--version", "1", "--examples",
                           str(root / "examples.tfrecord"), "--source",
                           str(models.path("functional")), "--against", "2")
    assert result.exit_code == 0, result.stderr
    assert doc["endpoint"] == "serve" and doc["examples"] == EXAMPLE_ROWS
    assert {o: f["within_tolerance"] for o, f in doc["parity"].items()} == {
        "probs": 1.0, "score": 1.0}
    assert doc["agreement"]["probs"]["top1_agreement"] == pytest.approx(
        expected["top1_agreement"])
    assert doc["thresholds"]["agreement_outputs"] is None


def test_examples_that_do_not_fit_the_feature_spec_are_listed_with_the_fix(kinds, tmp_path):
    import tensorflow as tf

    from shipyard.core.errors import UsageError
    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    repo, _, _ = kinds

    def run(examples: Path, endpoint: str) -> None:
        validate_version_on_examples(
            open_repository(repo), ValidateRequest(name="v", version=1, examples=str(examples),
                                                   endpoint=endpoint, against="2"),
            read_aliases=lambda name: None)

    no_x1 = tmp_path / "no-x1.csv"
    no_x1.write_text("x_0,x_1,x_2,color\n1,2,3,red\n")
    with pytest.raises(UsageError, match=(
            r"1 example\(s\) do not map onto endpoint 'serve' of v version 1:\n.*missing "
            r"feature\(s\) x1 of input 'examples' \(declared x1: float32\[3\], without a "
            r"default; the example has color, x_0, x_1, x_2\): add them to the examples, or "
            r"declare a `default:` for them in the export spec's tf_example")):
        run(no_x1, "serve")

    wrong = tmp_path / "wrong.tfrecord"
    with tf.io.TFRecordWriter(str(wrong)) as writer:
        example = tf.train.Example()
        example.features.feature["x1"].int64_list.value.extend([1, 2, 3])
        writer.write(example.SerializeToString())
        writer.write(b"not an example")
    with pytest.raises(UsageError) as raised:
        run(wrong, "classify")
    message = str(raised.value)
    assert "2 example(s) do not map onto endpoint 'classify'" in message
    assert ("feature x1: the record holds int64_list values where x1: float32[3] is declared "
            "(float_list)") in message
    assert "not a tf.Example record" in message


def test_rows_become_the_examples_the_endpoint_parses():
    """to_example on its own, parsed back with the parser the export builds from the spec."""
    import tensorflow as tf

    from shipyard.exporter.archive import feature_spec
    from shipyard.validation.examples import ExampleError, examples_input, to_example

    spec = parse_spec({"endpoints": [{"name": "s", "method": "call", "inputs": [{"tf_example": {
        "x": {"shape": [3], "dtype": "float32"},
        "ids": {"shape": [None], "dtype": "int64", "default": 0},
        "pairs": {"shape": [None, 2], "dtype": "float32"},
        "name": {"shape": [], "dtype": "string", "default": "?"}}}]}]})
    spec_input = examples_input(spec.normalized(), "s")
    assert spec_input.name == "input_0"
    rows = [{"x": [1, 2, 3], "ids": [7, "9007199254740993"], "pairs": [[1, 2], [3, 4]],
             "name": "a"},
            # CSV cells: "1 2 3" in one cell, an empty variable-length cell, no `name` column
            {"x_0": "1", "x_1": "2", "x_2": "3.5", "ids": "", "pairs": "5 6"}]
    parsed = tf.io.parse_example([to_example(row, spec_input) for row in rows],
                                 feature_spec(spec.endpoints[0].inputs[0].tf_example))
    np.testing.assert_array_equal(parsed["x"], [[1, 2, 3], [1, 2, 3.5]])
    # int64 ids are read as integers, not through float64 (which would round this one).
    np.testing.assert_array_equal(parsed["ids"], [[7, 9007199254740993], [0, 0]])
    np.testing.assert_array_equal(parsed["pairs"], [[[1, 2], [3, 4]], [[5, 6], [0, 0]]])
    assert parsed["name"].numpy().tolist() == [b"a", b"?"]  # the declared default

    for row, message in (
            ({"ids": [1], "pairs": [], "name": "a"},
             r"missing feature\(s\) x of input 'input_0' \(declared x: float32\[3\], without a "
             r"default; the example has ids, name, pairs\): add them"),
            ({"x": [1, 2, 3], "ids": [1.5], "pairs": []},
             r"feature ids: cannot read \[1.5\] as int64 \(1.5 is not an integer\)"),
            ({"x": [1, 2, 3], "pairs": [1, 2, 3]},
             r"feature pairs: 3 value\(s\) do not fit the declared shape \[null, 2\] \(a "
             r"multiple of 2\)"),
            ({"x": [1, None, 3], "pairs": []},
             r"feature x: null value\(s\) in \[1, None, 3\]; give every value, or leave the "
             r"feature out to use its default"),
            ({"x": ["a", "b", "c"], "pairs": []},
             r"feature x: cannot read \['a', 'b', 'c'\] as float32")):
        with pytest.raises(ExampleError, match=message):
            to_example(row, spec_input)
