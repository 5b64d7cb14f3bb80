"""The serving-runtime check's choices, made before anything runs: which TensorFlow the TF
Serving image runs, the flag and the environment variable, refused values, and how a failure on
the runtime is described. (The check on the real 2.19 runtime is in
integration/test_runtime_check.py.)"""

from __future__ import annotations

import pytest

from shipyard.core.errors import UsageError
from shipyard.core.images import TF_SERVING_GPU_IMAGE, TF_SERVING_IMAGE, runtime_of_image
from shipyard.exporter.runtime import ENV_VAR, RuntimeChoice, choose_runtime, describe_failure


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
