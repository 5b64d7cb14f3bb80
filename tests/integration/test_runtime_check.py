"""The serving-runtime check: each version is loaded and answers its warmup requests on the
TensorFlow of the TF Serving image (2.19 for tensorflow/serving:2.19.0), in an environment
created with uv in the user cache directory (export/runtime.py, export/runtime_check.py).

The integration tests use the real environment: `tensorflow-cpu==2.19.*` installed from the
package index on first use, and reused from the cache afterwards. conftest.py turns the check
off for every other test; these pass the runtime explicitly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.core.errors import UsageError
from shipyard.core.images import TF_SERVING_GPU_IMAGE, TF_SERVING_IMAGE, runtime_of_image
from shipyard.exporter.runtime import ENV_VAR, RuntimeChoice, choose_runtime, describe_failure

WEBP_SPEC = {"endpoints": [{"name": "serve", "method": "call",
                            "inputs": [{"images": {"shape": [None], "dtype": "string"}}]}]}


# ---- choosing the runtime (pure) ---------------------------------------------------------------

@pytest.mark.parametrize("image, runtime", [
    ("tensorflow/serving:2.19.0", "2.19"), ("tensorflow/serving:2.19.0-gpu", "2.19"),
    ("registry.example:5000/mirror/serving:2.18.1", "2.18"), ("tensorflow/serving:2.17", "2.17"),
    ("tensorflow/serving:latest", None), ("tensorflow/serving", None),
    ("registry.example:5000/serving", None),
])
def test_the_runtime_is_read_from_the_image_tag(image, runtime):
    assert runtime_of_image(image) == runtime


def test_the_default_is_the_tensorflow_of_the_image_the_manifests_render(monkeypatch):
    from shipyard.kube.manifests import ServingTarget
    from shipyard.rollout.policy import Serving

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert ServingTarget().image == Serving().image == TF_SERVING_IMAGE
    assert ServingTarget().gpu_image == TF_SERVING_GPU_IMAGE
    assert choose_runtime(None) == RuntimeChoice("2.19", explicit=False)
    assert choose_runtime(None).pip_spec == "==2.19.*"


def test_the_environment_variable_and_the_flag_choose_explicitly(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "2.18")
    assert choose_runtime(None) == RuntimeChoice("2.18", explicit=True)
    assert choose_runtime("2.19.0") == RuntimeChoice("2.19.0", explicit=True)
    assert choose_runtime("2.19.0").pip_spec == "==2.19.0"
    assert choose_runtime("none") == RuntimeChoice(None, explicit=True)
    monkeypatch.setenv(ENV_VAR, "none")
    assert choose_runtime(None).version is None


@pytest.mark.parametrize("value", ["2.x", "1.15", "2.11", "latest", "2"])
def test_a_runtime_that_is_not_a_usable_tensorflow_release_is_refused(value):
    with pytest.raises(UsageError, match=rf"^serving_runtime: '{value}' is not a TensorFlow "
                                         r"release.*2\.12 or newer.*'none'"):
        choose_runtime(value)


def test_a_bad_runtime_fails_before_anything_starts(cli, tmp_path):
    result = cli("export", str(tmp_path / "missing.keras"), "--spec", str(tmp_path / "s.yaml"),
                 "--repo", str(tmp_path / "repo"), "--name", "m", "--serving-runtime", "2.x")
    assert result.exit_code == 2, result.output
    assert "--serving-runtime: '2.x'" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_failures_name_the_op_or_attr_the_runtime_and_the_fix():
    # The loader's wording, as TensorFlow's op registry and NodeDef validation write it.
    op = describe_failure({"stage": "load", "error": "NotFoundError: Op type not registered "
                           "'DecodeWebP' in binary running on host. Make sure the Op and "
                           "Kernel are registered in the binary running in this process."},
                          "2.19")
    assert op.startswith("op 'DecodeWebP' is not registered in TensorFlow 2.19")
    assert "Export with a TensorFlow no newer than 2.19" in op
    attr = describe_failure({"stage": "load", "error": "InvalidArgumentError: NodeDef mentions "
                             "attr 'narrow_range' not in Op<name=FakeQuant; signature=x:float>"},
                            "2.15")
    assert attr.startswith("attr 'narrow_range' of op 'FakeQuant' does not exist in "
                           "TensorFlow 2.15")
    other = describe_failure({"stage": "warmup", "record": 2, "signature": "serving_default",
                              "error": "InvalidArgumentError: boom"}, "2.19")
    assert other.startswith("answering warmup request 2 through signature 'serving_default' "
                            "failed: InvalidArgumentError: boom.")


# ---- on the real 2.19 runtime ------------------------------------------------------------------

@pytest.mark.integration
def test_a_normal_export_loads_and_answers_on_the_2_19_runtime(launcher, models, repo):
    from test_export import FUNCTIONAL_SPEC, export

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


@pytest.mark.integration
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


@pytest.mark.integration
def test_the_default_runtime_unavailable_on_first_use_warns_and_records_the_skip(
        launcher, models, repo, no_package_index, caplog):
    from test_export import SEQUENTIAL_SPEC, export

    from shipyard.core.manifest import read_manifest

    with caplog.at_level("WARNING"):
        result = export(launcher, models.path("sequential"), SEQUENTIAL_SPEC, repo)

    record = read_manifest(Path(result.path)).verification["runtimes"]["2.19"]
    assert record["status"] == "skipped"
    assert "creating the TensorFlow 2.19 runtime failed" in record["reason"]
    assert any("skipped the serving-runtime check on TensorFlow 2.19" in r.getMessage()
               for r in caplog.records)


@pytest.mark.integration
def test_an_explicit_runtime_that_cannot_be_honoured_is_an_error(cli, models, repo,
                                                                 no_package_index, tmp_path):
    import yaml
    from test_export import SEQUENTIAL_SPEC

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--serving-runtime", "2.19")

    assert result.exit_code == 1, result.output
    assert "the serving-runtime check on TensorFlow 2.19 cannot run" in result.stderr
    assert "pass --serving-runtime none" in result.stderr
    assert not (repo / "m").exists() or list((repo / "m").iterdir()) == []
