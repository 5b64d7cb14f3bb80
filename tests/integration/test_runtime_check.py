"""The serving-runtime check: each version is loaded and answers its warmup requests on the
TensorFlow of the TF Serving image (2.19 for tensorflow/serving:2.19.0), in an environment
created with uv in the user cache directory (export/runtime.py, export/runtime_check.py).

These tests use the real environment: `tensorflow-cpu==2.19.*` installed from the package
index on first use, and reused from the cache afterwards. conftest.py turns the check off for
every other test; these pass the runtime explicitly. (Choosing the runtime and describing its
failures: unit/test_runtime_check.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.exports import export
from support.specs import FUNCTIONAL_SPEC, SEQUENTIAL_SPEC

from shipyard.exporter.runtime import ENV_VAR

# The webp test model's own input (a vector of encoded images), not the shared specs'.
WEBP_SPEC = {"endpoints": [{"name": "serve", "method": "call",
                            "inputs": [{"images": {"shape": [None], "dtype": "string"}}]}]}


def test_a_normal_export_loads_and_answers_on_the_2_19_runtime(launcher, models, repo):
    from shipyard.core.manifest import read_manifest

    result = export(launcher, models.path("functional"), FUNCTIONAL_SPEC, repo,
                    serving_runtime="2.19")

    runtimes = read_manifest(Path(result.path)).verification["runtimes"]
    assert list(runtimes) == ["2.19"]
    record = runtimes["2.19"]
    assert record["status"] == "passed"
    assert record["tensorflow"].startswith("2.19.")
    assert record["loader"] == "tf.compat.v1.saved_model.loader.load, tags {serve}"
    # Every warmup request answered, serving_default's included, like the original model.
    assert record["signatures"] == {"serve": 2, "serving_default": 1}
    assert record["warmup_records"] == 3
    assert set(record["parity"]) == {"serve", "serving_default"}
    assert max(record["parity"].values()) <= 1e-5


def test_an_op_the_runtime_lacks_is_refused_with_exit_4(cli, models, repo):
    """tf.io.decode_webp (op DecodeWebP) is new in TensorFlow 2.20: the export loads and
    answers with the project's TensorFlow, and TF Serving 2.19 would refuse to load it."""
    import yaml

    spec = repo.parent / "webp.yaml"
    spec.write_text(yaml.safe_dump(WEBP_SPEC))
    result = cli("export", str(models.path("webp")), "--spec", str(spec), "--repo", str(repo),
                 "--name", "webp", "--serving-runtime", "2.19")

    assert result.exit_code == 4, result.output
    assert ("the version does not serve on TF Serving's runtime, TensorFlow 2.19"
            in result.stderr)
    assert "op 'DecodeWebP' is not registered in TensorFlow 2.19" in result.stderr
    assert "Export with a TensorFlow no newer than 2.19" in result.stderr
    assert "nothing was published" in result.stderr
    assert not (repo / "webp").exists() or list((repo / "webp").iterdir()) == []

    # The same model passes when the check is off: the refusal came from the runtime alone.
    passed = cli("export", str(models.path("webp")), "--spec", str(spec), "--repo", str(repo),
                 "--name", "webp", "--serving-runtime", "none", "--json")
    assert passed.exit_code == 0, passed.output


@pytest.fixture
def no_package_index(monkeypatch, tmp_path):
    """First use without the package index: an empty shipyard cache and an empty uv cache,
    and uv told it is offline (as on a machine with no network)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("SHIPYARD_CACHE_DIR", str(tmp_path / "shipyard-cache"))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_OFFLINE", "1")


def test_the_default_runtime_unavailable_on_first_use_warns_and_records_the_skip(
        launcher, models, repo, no_package_index, caplog):
    from shipyard.core.manifest import read_manifest

    with caplog.at_level("WARNING"):
        result = export(launcher, models.path("sequential"), SEQUENTIAL_SPEC, repo)

    record = read_manifest(Path(result.path)).verification["runtimes"]["2.19"]
    assert record["status"] == "skipped"
    assert "creating the TensorFlow 2.19 runtime failed" in record["reason"]
    assert any("skipped the serving-runtime check on TensorFlow 2.19" in r.getMessage()
               for r in caplog.records)


def test_an_explicit_runtime_that_cannot_be_honoured_is_an_error(cli, models, repo,
                                                                 no_package_index, tmp_path):
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--serving-runtime", "2.19")

    assert result.exit_code == 1, result.output
    assert "the serving-runtime check on TensorFlow 2.19 cannot run" in result.stderr
    assert "pass --serving-runtime none" in result.stderr
    assert not (repo / "m").exists() or list((repo / "m").iterdir()) == []


# ---- the replay's checks: what TF Serving's request paths refuse, Session.run does not --------
# These call the child's check() in this process, with the project's TensorFlow (the checks are
# the child's own code, not the runtime's), on real versions with warmup files written by
# TensorFlow's TFRecordWriter (support/tf_serving_warmup_files.py).

def run_check(version: Path, tmp_path: Path) -> dict:
    from shipyard.exporter import runtime_check

    # plan: one output key per record (the parent's, one per warmed call); enough for any file.
    job = {"saved_model_dir": str(version), "outputs": str(tmp_path / "outputs.npz"),
           "plan": [{"key": f"call{i}/"} for i in range(1100)]}
    return runtime_check.check(job)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from support.tf_serving_classify_models import build_classify_model

    path = tmp_path_factory.mktemp("classifier") / "saved"
    build_classify_model(path)
    return path


def test_an_exported_version_passes_and_a_float64_feed_is_refused(published, tmp_path):
    """Session.run would cast the float64 record to the float input; TF Serving's Predict
    refuses it, so the check does."""
    import tensorflow as tf
    from support.tf_serving_warmup_files import copy_version, read_records, with_input_dtype

    exported = published / "m" / "1"
    assert run_check(exported, tmp_path)["ok"] is True
    records = read_records(exported)
    records[1] = with_input_dtype(records[1], tf.float64)
    version = copy_version(exported, tmp_path / "cast", records)
    result = run_check(version, tmp_path)
    assert (result["ok"], result["stage"], result["record"]) == (False, "warmup", 1)
    assert result["error"].startswith("Refused: input 'x' is double but the signature's tensor "
                                      "serve_x:0 is float: TF Serving's session refuses it")


def test_a_1001st_record_or_a_file_that_is_not_a_tfrecord_fails_the_check(published, tmp_path):
    from support.tf_serving_warmup_files import WARMUP, copy_version, read_records

    exported = published / "m" / "1"
    many = copy_version(exported, tmp_path / "many", read_records(exported) * 334)  # 1002
    result = run_check(many, tmp_path)
    assert (result["ok"], result["record"]) == (False, 1000)
    assert result["error"] == ("Refused: Number of warmup records exceeds the maximum (1000): "
                               "TF Serving's load fails")
    text = copy_version(exported, tmp_path / "text")
    (text / WARMUP).write_text("not a TFRecord file, but long enough for a header\n")
    result = run_check(text, tmp_path)
    assert (result["ok"], result["record"]) == (False, 0)
    assert result["error"].startswith("Refused: corrupted record at 0")
    assert "Please verify your warmup data is in TFRecord format" in result["error"]


@pytest.mark.parametrize("record, error", [
    (("classify", "scores_float64"), "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    (("classify", "classes_int64"), "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
    (("classify", "scores_rank1"), "Expected Tensor shape: [batch_size num_classes] but got [2]"),
    (("classify", "scores_first_row"), "Expected scores output batch size of 2. Got: 1"),
    (("classify", "columns_mismatch"),
     "Tensors class and score should match in dim_size(1). Got 2 vs. 3"),
    (("classify", "wrong_output_aliases"),
     'Expected classification signature outputs to contain at least one of "classes" or '
     '"scores"'),
    (("regress", "regress_two_columns"),
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,2]"),
    (("regress", "regress_first_row"), "Input batch size did not match output batch size: 2 "
                                       "vs. 1"),
    (("regress", "regress_int32"), "Expected output Tensor of DT_FLOAT.  Got: DT_INT32"),
    (("regress", "regress_two_outputs"), "Expected one output Tensor."),
    (("regress", "regress_float_input"), "Expects arg[0] to be float but string is provided"),
])
def test_classify_and_regress_replays_apply_tf_serving_s_result_checks(classifier, tmp_path,
                                                                       record, error):
    from support.tf_serving_warmup_files import classify_log, copy_version, regress_log

    kind, signature = record
    fine = [classify_log("serving_default"), regress_log("regress")]
    log = (classify_log if kind == "classify" else regress_log)(signature)
    version = copy_version(classifier, tmp_path / "v", [*fine, log])
    result = run_check(version, tmp_path)
    assert (result["ok"], result["stage"], result["record"], result["signature"]) == (
        False, "warmup", 2, signature)
    assert result["error"].startswith(f"Refused: {error}")


def test_the_failure_names_the_record_and_the_reason(classifier, tmp_path):
    from support.tf_serving_warmup_files import classify_log, copy_version

    from shipyard.exporter.runtime import describe_failure

    version = copy_version(classifier, tmp_path / "v", [classify_log("scores_float64")])
    with pytest.raises(AssertionError, match=r"^answering warmup request 0 through signature "
                                             r"'scores_float64' failed: Refused: Expected scores "
                                             r"Tensor of DT_FLOAT\. Got: DT_DOUBLE\."):
        raise AssertionError(describe_failure(run_check(version, tmp_path), "2.19"))
