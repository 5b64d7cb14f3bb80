"""The TF Serving test double (support/tf_serving_double.py) on real TensorFlow SavedModels, through
its gRPC API with the official stubs. What it must do is what TF Serving does, error messages
included, so the assertions below are TF Serving's behaviour, not the double's inventions.

TensorFlow and the TF Serving protos (which import TensorFlow) are imported inside the helpers
and fixtures, so collecting this module stays cheap (see conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from support.scale_models import save_scale_model

OK, NOT_FOUND, DATA_LOSS = 0, 5, 15  # tensorflow.error.Code


# ---- SavedModels, built once for the module -------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A TF Serving model repository. scale/1 answers y = x * 1, scale/2 answers y = x * 2 and
    scale/3 is corrupt (a saved_model.pb of garbage). clean/ holds copies 1, 2 and 5 (= 2), a
    staging directory and a file, which TF Serving does not take for versions."""
    root = tmp_path_factory.mktemp("tf-serving-repo")
    for version in (1, 2):
        save_scale_model(root / "scale" / str(version), float(version))
    (root / "scale" / "3").mkdir()
    (root / "scale" / "3" / "saved_model.pb").write_bytes(b"\x00 not a SavedModel \xff")
    for version, source in ((1, 1), (2, 2), (5, 2)):
        shutil.copytree(root / "scale" / str(source), root / "clean" / str(version))
    (root / "clean" / ".staging-0f3a").mkdir()
    (root / "clean" / "README").write_text("not a version")
    return root


@pytest.fixture
def make_double():
    """Starts doubles with non-default options; all are stopped after the test."""
    from support.tf_serving_double import TFServingDouble

    started = []

    def make(**options):
        server = TFServingDouble(**options)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# ---- a small client: the official stubs and protos ------------------------------------------

def model(name: str, base: Path, *, specific=None, latest=None, all_versions=False,
          labels=None, platform="tensorflow"):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelConfig(name=name, base_path=str(base),
                                                 model_platform=platform)
    if specific is not None:
        config.model_version_policy.specific.versions.extend(specific)
    if latest is not None:
        config.model_version_policy.latest.num_versions = latest
    if all_versions:
        config.model_version_policy.all.SetInParent()
    config.version_labels.update(labels or {})
    return config


def reload(server, *models, timeout: float = 30):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(models)
    with grpc.insecure_channel(server.address) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=timeout)


def status(server, name: str, version: int | None = None, label: str | None = None):
    """[(version, state name, error_code, error_message)], as GetModelStatus lists them."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    with grpc.insecure_channel(server.address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10)
    state = get_model_status_pb2.ModelVersionStatus.State.Name
    return [(s.version, state(s.state), s.status.error_code, s.status.error_message)
            for s in response.model_version_status]


def predict(server, name: str, x=(1.0, 2.5), *, version=None, label=None, inputs=None,
            signature=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature is not None:
        request.model_spec.signature_name = signature
    if inputs is None:
        inputs = {"x": tf.make_tensor_proto(list(x), dtype=tf.float32)}
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    with grpc.insecure_channel(server.address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10)


def answer(response) -> tuple[int, list[float]]:
    """(the version that answered, y)."""
    import tensorflow as tf

    return response.model_spec.version.value, tf.make_ndarray(response.outputs["y"]).tolist()


def wait(server, name: str, version: int, state: str = "AVAILABLE"):
    from support.tf_serving_double import wait_for_state

    return wait_for_state(server, name, version, state, timeout_s=20)


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, **kwargs)
    return failure.value


# ---- reload, labels, predict ----------------------------------------------------------------

def test_reload_then_predict_by_version_by_label_and_latest(tf_serving, repo):
    response = reload(tf_serving, model("m", repo / "scale", specific=[1, 2]))
    assert response.status.error_code == OK
    wait(tf_serving, "m", 1)
    wait(tf_serving, "m", 2)

    labels = {"stable": 1, "canary": 2}
    response = reload(tf_serving, model("m", repo / "scale", specific=[1, 2], labels=labels))
    assert response.status.error_code == OK
    assert answer(predict(tf_serving, "m", version=1)) == (1, [1.0, 2.5])
    assert answer(predict(tf_serving, "m", version=2)) == (2, [2.0, 5.0])
    assert answer(predict(tf_serving, "m", label="stable")) == (1, [1.0, 2.5])
    assert answer(predict(tf_serving, "m", label="canary")) == (2, [2.0, 5.0])
    latest = predict(tf_serving, "m")
    assert answer(latest) == (2, [2.0, 5.0])
    assert latest.model_spec.name == "m"
    assert latest.model_spec.signature_name == "serving_default"
    # TF Serving's gRPC Predict puts values in the typed fields, not tensor_content.
    assert list(latest.outputs["y"].float_val) == [2.0, 5.0]
    assert [len(r.model_config_list.config) for r in tf_serving.reload_requests] == [1, 1]
    assert dict(tf_serving.config.model_config_list.config[0].version_labels) == labels


def test_label_on_a_version_still_loading_is_refused_and_the_old_label_stays(make_double,
                                                                               repo):
    server = make_double(load_delay_s=1.0)
    reload(server, model("m", repo / "scale", specific=[1]))  # a new model: waits for it
    reload(server, model("m", repo / "scale", specific=[1], labels={"stable": 1}))
    reload(server, model("m", repo / "scale", specific=[1, 2], labels={"stable": 1}))
    wait(server, "m", 2, "LOADING")

    failure = refused(reload, server,
                      model("m", repo / "scale", specific=[1, 2], labels={"stable": 2}))
    assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details() == ("Request to assign label to version 2 of model m, which is not "
                                 "currently available for inference")
    assert answer(predict(server, "m", label="stable")) == (1, [1.0, 2.5])
    assert dict(server.config.model_config_list.config[0].version_labels) == {"stable": 1}

    wait(server, "m", 2)  # loading went on; now the label may move
    reload(server, model("m", repo / "scale", specific=[1, 2], labels={"stable": 2}))
    assert answer(predict(server, "m", label="stable")) == (2, [2.0, 5.0])


def test_label_in_the_same_reload_as_its_new_version_refuses_the_whole_reload(tf_serving,
                                                                              repo):
    reload(tf_serving, model("m", repo / "scale", specific=[1], labels={}))
    failure = refused(reload, tf_serving,
                      model("m", repo / "scale", specific=[1, 2], labels={"canary": 2}))
    assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details() == ("Request to assign label to version 2 of model m, which is not "
                                 "currently available for inference")
    tf_serving.poll()  # TF Serving checks labels before touching models: 2 is never aspired
    assert [row[:2] for row in status(tf_serving, "m")] == [(1, "AVAILABLE")]
    assert list(tf_serving.config.model_config_list.config[0].model_version_policy
                .specific.versions) == [1]


# ---- unloading ------------------------------------------------------------------------------

def test_version_removed_from_specific_is_unloaded(tf_serving, repo):
    reload(tf_serving, model("m", repo / "scale", specific=[1, 2]))
    wait(tf_serving, "m", 1)
    wait(tf_serving, "m", 2)

    reload(tf_serving, model("m", repo / "scale", specific=[2]))
    ended = wait(tf_serving, "m", 1, "END")
    assert (ended.status.error_code, ended.status.error_message) == (OK, "")
    assert status(tf_serving, "m") == [(2, "AVAILABLE", OK, ""), (1, "END", OK, "")]
    failure = refused(predict, tf_serving, "m", version=1)
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    assert failure.details() == "Servable not found for request: Specific(m, 1)"
    assert answer(predict(tf_serving, "m")) == (2, [2.0, 5.0])


def test_model_dropped_from_the_config_is_unloaded(tf_serving, repo):
    reload(tf_serving, model("a", repo / "scale", specific=[1]),
           model("b", repo / "scale", specific=[2]))
    # New models: the reload returned once they were loaded.
    assert status(tf_serving, "a") == [(1, "AVAILABLE", OK, "")]

    reload(tf_serving, model("b", repo / "scale", specific=[2]))
    assert status(tf_serving, "a") == [(1, "END", OK, "")]
    failure = refused(predict, tf_serving, "a")
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    assert failure.details() == "Servable not found for request: Latest(a)"
    assert answer(predict(tf_serving, "b")) == (2, [2.0, 5.0])


# ---- load failures --------------------------------------------------------------------------
# TF Serving retries a failed load 5 times, a minute apart (the double's defaults too); these
# tests keep the 5 retries but space them 10 ms apart. Retries themselves:
# test_tf_serving_warmup.py.

def test_corrupt_version_ends_with_an_error_naming_its_path_and_the_old_one_keeps_serving(
        make_double, repo):
    tf_serving = make_double(load_retry_interval_s=0.01)
    reload(tf_serving, model("m", repo / "scale", specific=[1]))
    reload(tf_serving, model("m", repo / "scale", specific=[3]))

    failed = wait(tf_serving, "m", 3, "END")
    assert failed.status.error_code == DATA_LOSS
    assert str(repo / "scale" / "3" / "saved_model.pb") in failed.status.error_message
    # Availability preserving: 1 is not unloaded while no aspired version is AVAILABLE.
    assert status(tf_serving, "m", version=1) == [(1, "AVAILABLE", OK, "")]
    assert answer(predict(tf_serving, "m")) == (1, [1.0, 2.5])


def test_new_model_whose_latest_version_fails_to_load_fails_the_reload(make_double, repo):
    tf_serving = make_double(load_retry_interval_s=0.01)
    failure = refused(reload, tf_serving, model("m", repo / "scale", specific=[3]))
    assert failure.code() == grpc.StatusCode.UNKNOWN
    # ServerCore's wording: "{" + per model "{" + ServableId's "{name: m version: 3}" + ...
    assert failure.details().startswith("1 model(s) did not become available: "
                                        "{{{name: m version: 3} due to error: DATA_LOSS: ")
    assert failure.details().endswith("}, }")
    assert str(repo / "scale" / "3" / "saved_model.pb") in failure.details()


def test_new_model_with_a_missing_base_path_holds_reloads_until_it_appears(tf_serving, repo,
                                                                           tmp_path):
    late = tmp_path / "late"
    failure = refused(reload, tf_serving, model("late", late), timeout=0.5)
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # TF Serving's reload hangs

    # Published as shipyard does (and must): a non-integer staging name, then a rename, so
    # the poller never sees a half-copied version.
    shutil.copytree(repo / "scale" / "1", late / ".staging")
    (late / ".staging").rename(late / "1")
    reload(tf_serving, model("late", late))  # queued behind the first, which now completes
    assert status(tf_serving, "late") == [(1, "AVAILABLE", OK, "")]


# ---- version policies -----------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "versions"), [
    ({}, [5]),                            # no policy: latest 1
    ({"latest": 2}, [5, 2]),
    ({"all_versions": True}, [5, 2, 1]),
    ({"specific": [1, 2]}, [2, 1]),
])
def test_version_policy_picks_integer_named_directories(tf_serving, repo, policy, versions):
    reload(tf_serving, model("m", repo / "clean", **policy))
    for version in versions:
        wait(tf_serving, "m", version)
    assert [row[0] for row in status(tf_serving, "m")] == versions


# ---- GetModelStatus -------------------------------------------------------------------------

def test_get_model_status_of_an_unknown_model_or_version_is_not_found(tf_serving, repo):
    failure = refused(status, tf_serving, "nope")
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    assert failure.details() == "Could not find any versions of model nope"

    # A `specific` version without a directory is never aspired: it has no status at all.
    reload(tf_serving, model("m", repo / "scale", specific=[1, 9]))
    failure = refused(status, tf_serving, "m", version=9)
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    assert failure.details() == "Could not find version 9 of model m"


def test_get_model_status_ignores_the_version_label(tf_serving, repo):
    reload(tf_serving, model("m", repo / "scale", specific=[1, 2]))
    wait(tf_serving, "m", 1)
    reload(tf_serving, model("m", repo / "scale", specific=[1, 2], labels={"stable": 1}))
    assert [row[0] for row in status(tf_serving, "m", label="stable")] == [2, 1]


# ---- Predict errors -------------------------------------------------------------------------

def test_predict_with_a_missing_or_unknown_input_is_invalid_argument(tf_serving, repo):
    import tensorflow as tf

    reload(tf_serving, model("m", repo / "scale", specific=[1]))

    failure = refused(predict, tf_serving, "m", inputs={})
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("input size does not match signature: 0!=1 len({}) != len({x}). "
                                 "Sent extra: {}. Missing but required: {x}.")

    failure = refused(predict, tf_serving, "m", inputs={"z": tf.make_tensor_proto([1.0])})
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("input tensor alias not found in signature: z. "
                                 "Inputs expected to be in the set {x}.")

    failure = refused(predict, tf_serving, "m", inputs={"x": tf.make_tensor_proto([1, 2])})
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == "Expects arg[0] to be float but int32 is provided"


def test_predict_with_an_unknown_label_or_signature(tf_serving, repo):
    reload(tf_serving, model("m", repo / "scale", specific=[1]))

    failure = refused(predict, tf_serving, "m", label="nope")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == "Unrecognized servable version label: nope"

    failure = refused(predict, tf_serving, "m", signature="nope")
    assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details() == 'Serving signature key "nope" not found.'


# ---- config validation ----------------------------------------------------------------------

@pytest.mark.parametrize(("models", "message"), [
    (lambda base: [model("m", base, specific=[2]), model("o", base, platform="onnx")],
     "Model o requests unsupported platform onnx"),
    (lambda base: [model("m", base, specific=[2], platform="")],
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
     "ModelServerConfig::model_platform."),
    (lambda base: [model("m", base, specific=[2]), model("m", base)],
     "Illegal to list model m multiple times in config list"),
    (lambda base: [model("m", "models/scale", specific=[2])],
     "Expected model m to have an absolute path or URI; got base_path()=models/scale"),
], ids=["platform", "no-platform", "duplicate", "relative-path"])
def test_invalid_config_is_refused_and_changes_nothing(tf_serving, repo, models, message):
    reload(tf_serving, model("m", repo / "scale", specific=[1]))
    applied = tf_serving.config.SerializeToString()

    failure = refused(reload, tf_serving, *models(repo / "scale"))
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == message
    tf_serving.poll()
    assert status(tf_serving, "m") == [(1, "AVAILABLE", OK, "")]
    assert tf_serving.config.SerializeToString() == applied
    assert len(tf_serving.reload_requests) == 2
