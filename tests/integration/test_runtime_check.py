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
