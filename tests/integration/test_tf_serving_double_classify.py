"""Classify and Regress on the TF Serving test double (support/tf_serving_double.py), called with the
official stubs (prediction_service_pb2_grpc) on real SavedModels whose SignatureDefs carry the
method names tensorflow/serving/classify and tensorflow/serving/regress. The expected answers
and error messages are TF Serving's (classifier.cc, regressor.cc, util.cc), not the double's.

TensorFlow and the TF Serving protos are imported inside the fixtures and helpers, so collecting
this module stays cheap (see conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from support.tf_serving_classify_models import build_classify_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """m/1 and m/2: the same SavedModel twice, so version choice shows in model_spec."""
    root = tmp_path_factory.mktemp("classify-repo")
    build_classify_model(root / "m" / "1")
    shutil.copytree(root / "m" / "1", root / "m" / "2")
    return root


def _serve(server, repo: Path):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    def config(**labels):
        model = model_server_config_pb2.ModelConfig(name="m", base_path=str(repo / "m"),
                                                    model_platform="tensorflow")
        model.model_version_policy.specific.versions.extend([1, 2])
        model.version_labels.update(labels)
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.append(model)
        return request

    with grpc.insecure_channel(server.address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stub.HandleReloadConfigRequest(config(), timeout=60)
        from support.tf_serving_double import wait_for_state

        wait_for_state(server, "m", 1, timeout_s=30)
        wait_for_state(server, "m", 2, timeout_s=30)
        # Labels only on AVAILABLE versions: a second reload, as with TF Serving.
        stub.HandleReloadConfigRequest(config(stable=1), timeout=60)
    return server


@pytest.fixture(scope="module")
def server(repo):
    """TF Serving as it starts by default: --enable_signature_method_name_check is off."""
    from support.tf_serving_double import TFServingDouble

    with TFServingDouble() as double:
        yield _serve(double, repo)


@pytest.fixture(scope="module")
def checked(repo):
    """A pod started with --enable_signature_method_name_check (main.cc's flag, parsed from the
    container's args like any other)."""
    from support.tf_serving_double import cold_start

    double = cold_start(["--model_name=m", "--model_base_path=/models/m",
                         "--enable_signature_method_name_check"], {"/models": repo})
    try:
        assert double.enable_signature_method_name_check
        yield double
    finally:
        double.stop()


# ---- a small client: the official stubs and protos -------------------------------------------

def example(x, offset=None):
    import tensorflow as tf

    feature = {}
    if x is not None:
        feature["x"] = tf.train.Feature(float_list=tf.train.FloatList(value=list(x)))
    if offset is not None:
        feature["offset"] = tf.train.Feature(float_list=tf.train.FloatList(value=[offset]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


XS = [(0.25, 0.75), (1.0, -2.0), (3.0, 0.5)]


def _request(request, signature, version, label, examples, context):
    request.model_spec.SetInParent()  # present even when every field is empty
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if context is not None:
        request.input.example_list_with_context.context.CopyFrom(context)
        request.input.example_list_with_context.examples.extend(examples)
    elif examples is not None:
        request.input.example_list.SetInParent()  # an example_list, possibly of none
        request.input.example_list.examples.extend(examples)
    return request


def classify(server, signature=None, xs=XS, *, examples=None, context=None, version=None,
             label=None, name="m"):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    if examples is None and xs is not None:
        examples = [example(x) for x in xs]
    request = _request(classification_pb2.ClassificationRequest(), signature, version, label,
                       examples, context)
    if name is not None:
        request.model_spec.name = name
    with grpc.insecure_channel(server.address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
            request, timeout=10)


def regress(server, signature="regress", xs=XS, *, examples=None, context=None, version=None,
            label=None):
    from tensorflow_serving.apis import prediction_service_pb2_grpc, regression_pb2

    if examples is None and xs is not None:
        examples = [example(x) for x in xs]
    request = _request(regression_pb2.RegressionRequest(), signature, version, label, examples,
                       context)
    request.model_spec.name = "m"
    with grpc.insecure_channel(server.address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(
            request, timeout=10)


def rows(response):
    """[[(label, score), ...] per example]."""
    return [[(c.label, pytest.approx(c.score)) for c in row.classes]
            for row in response.result.classifications]


def values(response):
    return [pytest.approx(r.value) for r in response.result.regressions]


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, **kwargs)
    return failure.value


def signature_text(repo: Path, key: str) -> str:
    """The SignatureDef as saved_model.pb holds it, in protobuf text format: what TF Serving's
    errors append with signature.DebugString()."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((repo / "m" / "1" / "saved_model.pb").read_bytes())
    return text_format.MessageToString(saved_model.meta_graphs[0].signature_def[key])


# ---- answers ---------------------------------------------------------------------------------

def test_classify_answers_labels_and_scores_per_example(server):
    response = classify(server)
    assert rows(response) == [[("neg", x0), ("pos", x1)] for x0, x1 in XS]
    # MakeModelSpec: the request's name, the signature used (the default named), the version.
    assert (response.model_spec.name, response.model_spec.signature_name,
            response.model_spec.version.value) == ("m", "serving_default", 2)


def test_classify_with_only_scores_or_only_classes_fills_only_those(server):
    scores = classify(server, "scores_only").result.classifications
    assert [[c.label for c in row.classes] for row in scores] == [["", ""]] * 3
    assert [[c.score for c in row.classes] for row in scores] == [
        [pytest.approx(v) for v in x] for x in XS]
    classes = classify(server, "classes_only").result.classifications
    assert [[(c.label, c.score) for c in row.classes] for row in classes] == [
        [("neg", 0.0), ("pos", 0.0)]] * 3


def test_regress_answers_one_value_per_example_from_batch_or_batch_by_one(server):
    expected = [x0 + 10 * x1 for x0, x1 in XS]
    response = regress(server)
    assert values(response) == expected
    assert (response.model_spec.name, response.model_spec.signature_name,
            response.model_spec.version.value) == ("m", "regress", 2)
    assert values(regress(server, "regress_column")) == expected


def test_example_list_with_context_merges_the_context_into_every_example(server):
    # The server feeds context bytes + example bytes: parsed as one Example, the context's
    # offset reaches every example, and a feature the example also has takes its value.
    context = example((100.0, 100.0), offset=1.0)
    examples = [example((0.5, 0.25)), example(None), example((2.0, 3.0), offset=-1.0)]
    expected_x = [(1.5, 1.25), (101.0, 101.0), (1.0, 2.0)]
    response = classify(server, examples=examples, context=context)
    assert rows(response) == [[("neg", x0), ("pos", x1)] for x0, x1 in expected_x]
    response = regress(server, examples=examples, context=context)
    assert values(response) == [x0 + 10 * x1 for x0, x1 in expected_x]


def test_the_version_is_chosen_by_version_label_or_latest(server):
    assert classify(server, version=1).model_spec.version.value == 1
    assert classify(server, label="stable").model_spec.version.value == 1
    assert regress(server, label="stable").model_spec.version.value == 1
    assert classify(server).model_spec.version.value == 2

    failure = refused(classify, server, label="nope")
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Unrecognized servable version label: nope")
    failure = refused(regress, server, version=7)
    assert (failure.code(), failure.details()) == (grpc.StatusCode.NOT_FOUND,
                                                   "Servable not found for request: "
                                                   "Specific(m, 7)")
    failure = refused(classify, server, name="")
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "ModelSpec has no name specified.")


def test_a_request_without_model_spec_is_refused(server):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        failure = refused(stub.Classify, classification_pb2.ClassificationRequest(), timeout=10)
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Missing ModelSpec")


# ---- the method-name check: off by default, on with the flag ---------------------------------

def test_without_the_check_a_tf2_predict_signature_of_classify_shape_serves_classify(server):
    response = classify(server, "native_tf2")
    assert rows(response) == [[("neg", x0), ("pos", x1)] for x0, x1 in XS]
    # ...and Predict takes any method name (predict_util.cc's VerifySignature is off too).
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", "custom_method"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0]], dtype=tf.float32))
    with grpc.insecure_channel(server.address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10)
    assert list(response.outputs["y"].float_val) == [2.0, 4.0]


def test_with_the_check_the_method_name_must_match_the_api(checked):
    assert rows(classify(checked)) == [[("neg", x0), ("pos", x1)] for x0, x1 in XS]
    assert values(regress(checked)) == [x0 + 10 * x1 for x0, x1 in XS]

    failure = refused(classify, checked, "native_tf2")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("Expected classification signature method_name to be "
                                 "tensorflow/serving/classify. Was: tensorflow/serving/predict")
    failure = refused(classify, checked, "regress")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("Expected classification signature method_name to be "
                                 "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    failure = refused(regress, checked, "serving_default")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("Expected regression signature method_name to be "
                                 "tensorflow/serving/regress. Was: tensorflow/serving/classify")

    # Predict's VerifySignature: predict, classify and regress names only, INTERNAL otherwise.
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", "custom_method"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0]], dtype=tf.float32))
    with grpc.insecure_channel(checked.address) as channel:
        failure = refused(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict,
                          request, timeout=10)
    assert failure.code() == grpc.StatusCode.INTERNAL
    assert failure.details() == (
        "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
        "tensorflow/serving/classify, tensorflow/serving/regress}. Was: example.com/custom")


# ---- signature lookup and structure (GetClassificationSignatureDef, PreProcess*) -------------

def test_a_missing_signature_is_named(server):
    for call in (classify, regress):
        failure = refused(call, server, "nope")
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.details() == "No signature was found with the name: nope"


def test_a_predict_signature_through_classify_and_regress_has_no_inputs_alias(server, repo):
    # Without the method-name check the structure decides: one input, but not `inputs`.
    for call, kind in ((classify, "classification"), (regress, "regression")):
        failure = refused(call, server, "predict")
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.details() == (f"No {kind} inputs found in SignatureDef: "
                                     + signature_text(repo, "predict"))


@pytest.mark.parametrize("signature, message", [
    ("two_inputs", "Expected one input Tensor."),
    ("three_outputs", "Expected one or two output Tensors, found 3"),
])
def test_classify_structure_errors(server, checked, signature, message):
    for double in (server, checked):  # PreProcessClassification runs with the check on too
        failure = refused(classify, double, signature)
        assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       message)


def test_classify_needs_inputs_and_classes_or_scores_aliases(server, checked, repo):
    for double in (server, checked):
        failure = refused(classify, double, "wrong_input_alias")
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.details() == ("No classification inputs found in SignatureDef: "
                                     + signature_text(repo, "wrong_input_alias"))
        failure = refused(classify, double, "wrong_output_aliases")
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.details() == (
            'Expected classification signature outputs to contain at least one of "classes" '
            'or "scores". Signature was: ' + signature_text(repo, "wrong_output_aliases"))
        assert "probabilities" in failure.details()


def test_regress_structure_errors(server, repo):
    failure = refused(regress, server, "regress_two_outputs")
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Expected one output Tensor.")
    failure = refused(regress, server, "regress_wrong_output")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("No regression outputs found in SignatureDef: "
                                 + signature_text(repo, "regress_wrong_output"))


# ---- input (InputToSerializedExampleTensor, the session's feed) ------------------------------

def test_empty_input_is_refused(server):
    # No input at all, an example_list of none, a context with no examples: no example to
    # feed, checked after the signature (so a valid one is needed to get here).
    for call in (classify, regress):
        for kwargs in ({"xs": None}, {"xs": []}, {"examples": [], "context": example((1, 2))}):
            failure = refused(call, server, **kwargs)
            assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                           "Input is empty.")


def test_a_float_inputs_tensor_cannot_take_serialized_examples(server):
    failure = refused(regress, server, "regress_float_input")
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Expects arg[0] to be float but string is "
                                                   "provided")


# ---- output checks (PostProcessClassificationResult, PostProcessRegressionResult) ------------

@pytest.mark.parametrize("signature, message", [
    ("scores_rank1", "Expected Tensor shape: [batch_size num_classes] but got [3]"),
    ("scores_float64", "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    ("classes_int64", "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
    ("scores_first_row", "Expected scores output batch size of 3. Got: 1"),
    ("columns_mismatch", "Tensors class and score should match in dim_size(1). Got 2 vs. 3"),
])
def test_classify_output_errors(server, signature, message):
    failure = refused(classify, server, signature)
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize("signature, message", [
    ("regress_two_columns", "Expected output Tensor shape to be either [batch_size] or "
                            "[batch_size, 1] but got [3,2]"),
    ("regress_first_row", "Input batch size did not match output batch size: 3 vs. 1"),
    ("regress_int32", "Expected output Tensor of DT_FLOAT.  Got: DT_INT32"),
])
def test_regress_output_errors(server, signature, message):
    failure = refused(regress, server, signature)
    assert (failure.code(), failure.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_a_message_over_1024_bytes_is_cut_as_tf_serving_sends_it(server, repo):
    # grpc_status_util.cc's ToGRPCStatus: the first 1024 bytes, then "...TRUNCATED".
    failure = refused(classify, server, "long_output_alias")
    message = ('Expected classification signature outputs to contain at least one of "classes" '
               'or "scores". Signature was: ' + signature_text(repo, "long_output_alias"))
    assert len(message) > 1024
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == message[:1024] + "...TRUNCATED"
