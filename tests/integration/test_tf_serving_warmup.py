"""TF Serving's load-time behaviour in the test double (support/tf_serving_double.py): warmup
replay (saved_model_warmup.cc, saved_model_warmup_util.cc) and load retries (loader_harness.cc,
util/retrier.cc), and what shipyard's client says about a version still LOADING after its
deadline (shipyard/serving/client.py).

The versions are real: copies of the session's published version (a shipyard export, with
the warmup file its export wrote) and of the Classify/Regress test SavedModel; the warmup files
are written with TensorFlow's TFRecordWriter. The expected errors are TF Serving's wording.
Retry intervals are small here (TF Serving's default is a minute)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import pytest
from support.tf_serving_warmup_files import (
    WARMUP,
    classify_log,
    copy_version,
    read_records,
    regress_log,
    with_input_dtype,
)

INVALID_ARGUMENT, FAILED_PRECONDITION, DATA_LOSS = 3, 9, 15  # tensorflow.error.Code


@pytest.fixture(scope="module")
def exported(published) -> Path:
    """A shipyard export (model m, version 1 of the session's published repository)."""
    return published / "m" / "1"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """The Classify/Regress SavedModel: one signature per case of the result checks."""
    from support.tf_serving_classify_models import build_classify_model

    path = tmp_path_factory.mktemp("classifier") / "saved"
    build_classify_model(path)
    return path


@pytest.fixture
def doubles():
    """Starts doubles with the given options; all are stopped after the test."""
    from support.tf_serving_double import TFServingDouble

    started = []

    def start(**options):
        double = TFServingDouble(**options)
        double.start()
        started.append(double)
        return double

    yield start
    for double in started:
        double.stop()


def config(base: Path, versions=(1,), name: str = "m"):
    from tensorflow_serving.config import model_server_config_pb2

    model = model_server_config_pb2.ModelConfig(name=name, base_path=str(base),
                                                model_platform="tensorflow")
    model.model_version_policy.specific.versions.extend(versions)
    result = model_server_config_pb2.ModelServerConfig()
    result.model_config_list.config.append(model)
    return result


def reload(double, base: Path, versions=(1,), name: str = "m", timeout: float = 60):
    """HandleReloadConfigRequest over gRPC; the RpcError it ends with, or None."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest(config=config(base, versions, name))
    with grpc.insecure_channel(double.address) as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=timeout)
        except grpc.RpcError as failure:
            return failure
    return None


def ended(double, version: int = 1, name: str = "m"):
    """(state name, error code, error message) of a version, as GetModelStatus reports it."""
    from support.tf_serving_double import State

    ((_, state, error),) = double.model_status(name, version)
    return State.Name(state), (error.code if error else 0), (error.message if error else "")


# ---- warmup --------------------------------------------------------------------------------

def test_an_exported_version_replays_its_warmup_requests_and_loads(doubles, exported,
                                                                   tmp_path):
    records = read_records(exported)
    assert records and {r.WhichOneof("log_type") for r in records} == {"predict_log"}
    base = tmp_path / "m"
    copy_version(exported, base / "1")
    double = doubles(load_retry_interval_s=0.01)
    assert reload(double, base) is None
    assert ended(double) == ("AVAILABLE", 0, "")


def test_a_record_whose_predict_fails_fails_the_load(doubles, exported, tmp_path):
    """Session.run in Python would cast a float64 feed to the float input; TF Serving's
    Predict refuses it, and so the warmup replay, and so the load."""
    import tensorflow as tf

    records = read_records(exported)
    records[1] = with_input_dtype(records[1], tf.float64)
    base = tmp_path / "m"
    copy_version(exported, base / "1", records)
    double = doubles(max_num_load_retries=0)

    failure = reload(double, base)
    assert failure.code() == grpc.StatusCode.UNKNOWN
    assert failure.details() == ("1 model(s) did not become available: {{{name: m version: 1} "
                                 "due to error: INVALID_ARGUMENT: Expects arg[0] to be float but "
                                 "double is provided}, }")
    assert ended(double) == ("END", INVALID_ARGUMENT,
                             "Expects arg[0] to be float but double is provided")


def test_a_record_naming_a_signature_the_version_lacks_fails_the_load(doubles, exported,
                                                                      tmp_path):
    records = read_records(exported)
    records[0].predict_log.request.model_spec.signature_name = "nope"
    base = tmp_path / "m"
    copy_version(exported, base / "1", records)
    double = doubles(max_num_load_retries=0)
    assert reload(double, base) is not None
    assert ended(double) == ("END", FAILED_PRECONDITION, 'Serving signature key "nope" not found.')


def test_a_record_that_does_not_parse_fails_the_load(doubles, exported, tmp_path):
    base = tmp_path / "m"
    copy_version(exported, base / "1", [*read_records(exported), b"\xff\xff\xff"])
    double = doubles(max_num_load_retries=0)
    assert reload(double, base) is not None
    state, code, message = ended(double)
    assert (state, code) == ("END", INVALID_ARGUMENT)
    assert message.startswith("Failed to parse warmup record: ")
    assert message.endswith(f" from {base / '1' / WARMUP}")


def test_more_than_1000_records_fail_the_load_and_1000_pass(doubles, exported, tmp_path):
    """WarmupConsts::kMaxNumRecords, counted after each record ran. Empty PredictionLogs
    (no log_type) are replayed as nothing, so 1001 of them cost little."""
    base = tmp_path / "m"
    copy_version(exported, base / "1", [b""] * 1000)
    copy_version(exported, base / "2", [b""] * 1001)
    double = doubles(max_num_load_retries=0)
    assert reload(double, base, (1, 2)) is not None  # 2 is the newest: the reload waits on it
    from support.tf_serving_double import wait_for_state

    wait_for_state(double, "m", 1, "AVAILABLE", timeout_s=30)
    assert ended(double, 2) == ("END", INVALID_ARGUMENT,
                                "Number of warmup records exceeds the maximum (1000) at "
                                f"{base / '2' / WARMUP}")


def test_a_warmup_file_that_is_not_a_tfrecord_fails_the_load(doubles, exported, tmp_path):
    base = tmp_path / "m"
    copy_version(exported, base / "1")
    (base / "1" / WARMUP).write_text("predict_log { request { model_spec { name: 'm' } } }\n")
    double = doubles(max_num_load_retries=0)
    assert reload(double, base) is not None
    state, code, message = ended(double)
    assert (state, code) == ("END", DATA_LOSS)
    assert message.startswith("corrupted record at 0")  # TensorFlow's record reader
    assert message.endswith(". Please verify your warmup data is in TFRecord format.")


@pytest.mark.parametrize("records, outcome", [
    ([classify_log("serving_default"), regress_log("regress"), regress_log("regress_column")],
     ("AVAILABLE", 0, "")),
    ([classify_log("serving_default"), classify_log("scores_float64")],
     ("END", INVALID_ARGUMENT, "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE")),
    ([classify_log("scores_first_row")],
     ("END", INVALID_ARGUMENT, "Expected scores output batch size of 2. Got: 1")),
    ([regress_log("regress_two_columns")],
     ("END", INVALID_ARGUMENT, "Expected output Tensor shape to be either [batch_size] or "
                               "[batch_size, 1] but got [2,2]")),
    ([regress_log("regress_int32")],
     ("END", INVALID_ARGUMENT, "Expected output Tensor of DT_FLOAT.  Got: DT_INT32")),
], ids=["fine", "scores-float64", "scores-batch", "regress-shape", "regress-int32"])
def test_classify_and_regress_records_go_through_their_result_checks(doubles, classifier,
                                                                     tmp_path, records,
                                                                     outcome):
    base = tmp_path / "m"
    copy_version(classifier, base / "1", records)
    double = doubles(max_num_load_retries=0)
    reload(double, base)
    assert ended(double) == outcome


def test_warmup_follows_the_flag_and_is_on_by_default(exported, tmp_path):
    from support.tf_serving_double import ServerStartError, cold_start, parse_model_server_flags

    assert parse_model_server_flags([]).enable_model_warmup is True  # Server::Options
    base = tmp_path / "models" / "m"
    copy_version(exported, base / "1", [b"\xff\xff\xff"])
    args = ["--model_name=m", "--model_base_path=/models/m", "--max_num_load_retries=0"]
    with pytest.raises(ServerStartError, match=r"^Failed to start server\. Error: UNKNOWN: Some "
                                               r"models did not become available: "
                                               r"\{\{name: m version: 1\}, \}$"):
        cold_start(args, {"/models": tmp_path / "models"})
    double = cold_start([*args, "--enable_model_warmup=false"], {"/models": tmp_path / "models"})
    try:
        assert ended(double) == ("AVAILABLE", 0, "")
    finally:
        double.stop()


# ---- load retries --------------------------------------------------------------------------

def test_retry_settings_are_tf_serving_s_by_default_and_read_from_the_flags():
    from support.tf_serving_double import TFServingDouble, parse_model_server_flags

    double = TFServingDouble()  # not started
    assert (double.max_num_load_retries, double.load_retry_interval_s) == (5, 60.0)
    flags = parse_model_server_flags([])
    assert (flags.max_num_load_retries, flags.load_retry_interval_micros) == (5, 60_000_000)
    flags = parse_model_server_flags(["--max_num_load_retries=1",
                                      "--load_retry_interval_micros=250000"])
    assert (flags.max_num_load_retries, flags.load_retry_interval_micros) == (1, 250_000)


def test_a_failing_load_stays_loading_through_its_retries_and_a_fixed_file_then_loads(
        doubles, exported, tmp_path, caplog):
    """The version is LOADING, status OK, between attempts; each attempt loads the version
    again, warmup included: fixing the file during the retries lets the next attempt pass."""
    records = read_records(exported)
    base = tmp_path / "m"
    copy_version(exported, base / "1")
    copy_version(exported, base / "2", [b"\xff\xff\xff"])
    double = doubles(max_num_load_retries=3, load_retry_interval_s=0.5)
    assert reload(double, base, (1,)) is None
    caplog.set_level(logging.ERROR, logger="support.tf_serving_double")
    assert reload(double, base, (1, 2)) is None  # m is not new: the reload does not wait

    deadline = time.monotonic() + 30
    while "Loading servable: {name: m version: 2} failed" not in caplog.text:
        assert time.monotonic() < deadline, "the first attempt did not fail"
        time.sleep(0.02)
    assert ended(double, 2) == ("LOADING", 0, "")
    copy_version(exported, tmp_path / "fixed", records)
    (tmp_path / "fixed" / WARMUP).replace(base / "2" / WARMUP)

    from support.tf_serving_double import wait_for_state

    wait_for_state(double, "m", 2, "AVAILABLE", timeout_s=30)


def test_a_reload_adding_a_model_waits_through_every_retry_before_failing(doubles, exported,
                                                                          tmp_path):
    base = tmp_path / "m"
    copy_version(exported, base / "1", [b"\xff\xff\xff"])
    double = doubles(max_num_load_retries=2, load_retry_interval_s=0.3)
    started = time.monotonic()
    failure = reload(double, base)
    assert time.monotonic() - started >= 2 * 0.3  # three attempts, two intervals
    assert failure.code() == grpc.StatusCode.UNKNOWN
    assert failure.details().startswith("1 model(s) did not become available: {{{name: m "
                                        "version: 1} due to error: INVALID_ARGUMENT: Failed to "
                                        "parse warmup record: ")
    assert ended(double)[:2] == ("END", INVALID_ARGUMENT)


# ---- shipyard's client: a version still LOADING after its deadline ---------------------------

STILL_LOADING = (r"still LOADING\. TF Serving retries a load that fails --max_num_load_retries "
                 r"times \(default 5\), --load_retry_interval_micros apart \(default 60000000, "
                 r"60 s\), and reports the version LOADING until the last attempt fails, so a "
                 r"broken version \(or one whose warmup requests fail\) can stay LOADING about "
                 r"5 minutes\. Check the server's log for \"Loading servable: \{name: m "
                 r"version: V\} failed\"")


def test_a_reload_past_its_deadline_names_the_version_still_loading_and_the_retry_flags(
        doubles, exported, tmp_path):
    from shipyard.core.errors import ServingError
    from shipyard.serving.client import ServingClient

    base = tmp_path / "m"
    copy_version(exported, base / "1", [b"\xff\xff\xff"])
    double = doubles(load_retry_interval_s=30)  # TF Serving's 5 retries; a long interval
    with ServingClient(double.address) as client:
        with pytest.raises(ServingError, match=r"^timed out after 0\.5 s waiting for TF Serving "
                                               r"at 127\.0\.0\.1:\d+ to apply the config \(it "
                                               r"answers once new models have loaded\): m "
                                               r"version\(s\) 1 " + STILL_LOADING) as failure:
            client.reload(config(base), 0.5)
    assert failure.value.exit_code == 7


def test_a_wait_past_its_deadline_names_the_version_still_loading_and_the_retry_flags(
        doubles, exported, tmp_path):
    from shipyard.core.errors import ServingError
    from shipyard.serving.client import ServingClient

    base = tmp_path / "m"
    copy_version(exported, base / "1")
    copy_version(exported, base / "2", [b"\xff\xff\xff"])
    double = doubles(load_retry_interval_s=30)
    with ServingClient(double.address) as client:
        client.reload(config(base, (1,)), 30)
        client.reload(config(base, (1, 2)), 30)  # m is served: answered before 2 loads
        with pytest.raises(ServingError, match=r"^timed out after 0\.5 s waiting for TF Serving "
                                               r"at 127\.0\.0\.1:\d+ to report m version\(s\) "
                                               r"AVAILABLE \(2: LOADING\): m version\(s\) 2 "
                                               + STILL_LOADING):
            client.wait_available("m", (2,), 0.5)
