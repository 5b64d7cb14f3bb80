"""The serving-runtime check's child: runs with the TF Serving image's TensorFlow.

Started by exporter/runtime.py with the Python of the runtime's own environment
(`tensorflow-cpu==<runtime>`), by file path, so it imports nothing from shipyard or from the
exporting environment: only the standard library, numpy, TensorFlow and TF Serving's protos.

It imports TensorFlow at once (the cost it exists to pay early), waits for one job on stdin
(a JSON line), then does what TF Serving does with a new version:
1. loads it with the TF1 session loader, tags {serve}, in its own Graph and Session
   (TF Serving's SavedModelBundle loader: LoadSavedModel with kSavedModelTagServe);
2. replays `assets.extra/tf_serving_warmup_requests` through the signatures the records name
   (TF Serving's RunSavedModelWarmup: predict_log, classify_log and regress_log records).
The outputs of each record go to an npz file for the parent to compare with the original
model's; the result (or where and how it failed) goes to a JSON file.

A replay is Session.run, which is laxer than TF Serving's request paths, so each record first
goes through the checks TF Serving makes on it, and a record TF Serving would refuse fails the
check (stage "warmup", its index, the reason): predict_util.cc's PreProcessPrediction (the
inputs are exactly the signature's, each of the signature's dtype: Python's Session.run
converts a mismatched feed silently, TF Serving's C++ session refuses it; output_filter
aliases known and unique); for Classify and Regress, classifier.cc's and regressor.cc's
PreProcessClassification / PreProcessRegression (one input aliased `inputs`, a DT_STRING
tensor fed the serialized examples; one or two outputs among `classes` and `scores`, or exactly
one output `outputs`), util.cc's InputToSerializedExampleTensor (example_list or
example_list_with_context, not empty) and PostProcessClassificationResult /
PostProcessRegressionResult (classes DT_STRING and scores DT_FLOAT, each [batch_size,
num_classes] with the same num_classes; outputs DT_FLOAT, [batch_size] or [batch_size, 1];
batch_size the number of examples). The file is read as saved_model_warmup_util.cc reads it:
a record that does not parse, or a 1001st record, fails, as TF Serving's load does. With
--enable_signature_method_name_check (off in the manifests shipyard renders) TF Serving would
also check the signatures' method names; this check does not.
"""

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # saved_model_warmup_util.h's WarmupConsts::kMaxNumRecords


class Refused(Exception):
    """A warmup request TF Serving would refuse; the message says why, in TF Serving's words
    where it has them."""


def main() -> int:
    # Imported while the parent exports, without the import of all of Keras that
    # TensorFlow's __init__ makes eagerly (and tolerates failing): TF Serving loads versions
    # with no Keras either. As shipyard.exporter.children.import_tensorflow_without_keras,
    # repeated because this file imports nothing from shipyard.
    sys.modules["keras.src.optimizers"] = None
    import tensorflow as tf  # noqa: F401
    del sys.modules["keras.src.optimizers"]

    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent gave up; it removes the working folder
    job = json.loads(line)
    try:
        result = check(job)
    except Exception as err:  # noqa: BLE001 (anything unexpected is reported, not hidden)
        result = {"ok": False, "stage": "check", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def check(job: dict) -> dict:
    import tensorflow as tf

    path = job["saved_model_dir"]
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    started = time.monotonic()
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    except Exception as err:  # noqa: BLE001 (the loader's own message is the finding)
        return {"ok": False, "stage": "load", "error": f"{type(err).__name__}: {err}",
                "tensorflow": tf.__version__}
    load_seconds = time.monotonic() - started
    signatures = dict(meta_graph.signature_def)

    outputs: dict = {}
    counts: dict = {}
    try:
        records = read_warmup(Path(path) / WARMUP_PATH)
    except Refused as err:
        return {"ok": False, "stage": "warmup", "record": err.args[1],
                "signature": "(none: the file's record was not read)",
                "error": f"Refused: {err.args[0]}", "tensorflow": tf.__version__}
    plan = job["plan"]
    for index, (record, step) in enumerate(zip(records, plan)):
        name = record_signature(record)
        try:
            answered = answer(tf, session, signatures, record)
        except Exception as err:  # noqa: BLE001
            return {"ok": False, "stage": "warmup", "record": index, "signature": name,
                    "error": f"{type(err).__name__}: {err}", "tensorflow": tf.__version__}
        prefix = step["key"]  # the key of the original model's outputs for this call
        outputs.update({prefix + key: plain(value) for key, value in answered.items()})
        counts[name] = counts.get(name, 0) + 1
    np.savez(job["outputs"], **outputs)
    session.close()
    return {"ok": True, "tensorflow": tf.__version__, "load_seconds": load_seconds,
            "records": len(records), "signatures": counts}


def read_warmup(path: Path) -> list:
    """The file's PredictionLog records, as RunSavedModelWarmupUntracked reads them: none
    without the file; Refused(reason, index) for a record that does not parse or a 1001st one
    (the file's read errors, e.g. not a TFRecord, are TensorFlow's own DataLossError)."""
    import tensorflow as tf
    from google.protobuf import message
    from tensorflow_serving.apis import prediction_log_pb2

    if not path.exists():
        return []
    logs: list = []
    records = tf.compat.v1.io.tf_record_iterator(str(path))
    while True:
        index = len(logs)
        try:
            raw = next(records)
        except StopIteration:
            return logs
        except tf.errors.DataLossError as err:
            raise Refused(f"{err.message}. Please verify your warmup data is in TFRecord "
                          "format. (TF Serving's load fails)", index) from None
        if index >= MAX_WARMUP_RECORDS:
            raise Refused(f"Number of warmup records exceeds the maximum "
                          f"({MAX_WARMUP_RECORDS}): TF Serving's load fails", index)
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw)
        except message.DecodeError:
            raise Refused("Failed to parse warmup record as a PredictionLog: TF Serving's "
                          "load fails", index) from None
        logs.append(log)


def record_signature(log) -> str:
    kind = log.WhichOneof("log_type")
    if kind is None:
        return "serving_default"
    request = getattr(log, kind).request
    return request.model_spec.signature_name or "serving_default"


def _enum_name(enum: int) -> str:
    """DT_FLOAT, DT_STRING..."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum)


def _dtype_name(tf, enum: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float"."""
    return _enum_name(enum)[3:].lower()


def answer(tf, session, signatures: dict, log) -> dict:
    """One warmup record through its signature, fed as TF Serving feeds it, after the checks
    TF Serving's request path makes (see the module docstring); raises Refused."""
    kind = log.WhichOneof("log_type")
    if kind not in ("predict_log", "classify_log", "regress_log"):
        # (saved_model_warmup.cc's RunWarmupRequest: multi_inference_log runs
        # RunMultiInference, predict_streamed_log and session_run_log are UNIMPLEMENTED.)
        raise ValueError(f"warmup record of kind {kind!r} is not replayed by this check")
    request = getattr(log, kind).request
    name = record_signature(log)
    if name not in signatures:
        raise KeyError(f"signature {name!r} is not in the SavedModel ({sorted(signatures)})")
    signature = signatures[name]
    graph = session.graph
    if kind == "predict_log":
        feeds = _predict_feeds(tf, signature, request)
        aliases = list(request.output_filter) or sorted(signature.outputs)
        fetches = {alias: signature.outputs[alias].name for alias in aliases}
        return session.run(fetches, feeds)
    if kind == "classify_log":
        wanted = _pre_process_classification(signature)
    else:
        wanted = _pre_process_regression(signature)
    examples = _serialized_examples(request.input)
    fed = graph.get_tensor_by_name(signature.inputs["inputs"].name)
    if fed.dtype != tf.string:
        # Python's Session.run would try to convert the strings; TF Serving's session refuses.
        raise Refused(f"Expects arg[0] to be {_dtype_name(tf, fed.dtype.as_datatype_enum)} "
                      "but string is provided (the "
                      "signature's `inputs` tensor must be DT_STRING: TF Serving feeds it the "
                      "serialized tf.Examples)")
    # Every output, for the comparison with the original model; TF Serving fetches `wanted`.
    fetches = {alias: info.name for alias, info in signature.outputs.items()}
    answered = session.run(fetches, {fed.name: examples})
    dtypes = {alias: graph.get_tensor_by_name(signature.outputs[alias].name).dtype
              for alias in wanted}
    if kind == "classify_log":
        _post_process_classification(tf, answered, dtypes, len(examples))
    else:
        _post_process_regression(tf, answered, dtypes, len(examples))
    return answered


def _predict_feeds(tf, signature, request) -> dict:
    """predict_util.cc's PreProcessPrediction: the request's inputs are exactly the
    signature's, each parses, and each has the dtype of its tensor (the C++ session's
    check); the output_filter's aliases exist and are unique. {tensor name: value}."""
    expected, sent = sorted(signature.inputs), sorted(request.inputs)
    if sent != expected:
        raise Refused(f"input size does not match signature: {len(sent)}!={len(expected)} "
                      f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent "
                      f"extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. Missing but "
                      f"required: {{{','.join(sorted(set(expected) - set(sent)))}}}."
                      if len(sent) != len(expected) else
                      f"input tensor alias not found in signature: "
                      f"{sorted(set(sent) - set(expected))[0]}. Inputs expected to be in the "
                      f"set {{{','.join(expected)}}}.")
    feeds = {}
    for alias in sent:
        info, proto = signature.inputs[alias], request.inputs[alias]
        if proto.dtype != info.dtype:
            raise Refused(f"input {alias!r} is {_dtype_name(tf, proto.dtype)} but the "
                          f"signature's tensor {info.name} is {_dtype_name(tf, info.dtype)}: "
                          f"TF Serving's session refuses it (\"Expects arg[...] to be "
                          f"{_dtype_name(tf, info.dtype)} but {_dtype_name(tf, proto.dtype)} is "
                          "provided\"), where Session.run would convert it")
        try:
            feeds[info.name] = tf.make_ndarray(proto)
        except Exception:  # noqa: BLE001 (any undecodable TensorProto)
            raise Refused(f"tensor parsing error: {alias}") from None
    seen = set()
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise Refused(f"output tensor alias not found in signature: {alias} Outputs "
                          f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise Refused(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return feeds


def _pre_process_classification(signature) -> list:
    """classifier.cc's PreProcessClassification: the output aliases Classify fetches."""
    if len(signature.inputs) != 1:
        raise Refused("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise Refused(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise Refused("No classification inputs found in SignatureDef (the one input must be "
                      f"aliased 'inputs', not {sorted(signature.inputs)})")
    wanted = [alias for alias in ("classes", "scores") if alias in signature.outputs]
    if not wanted:
        raise Refused('Expected classification signature outputs to contain at least one of '
                      f'"classes" or "scores" (they are {sorted(signature.outputs)})')
    return wanted


def _pre_process_regression(signature) -> list:
    """regressor.cc's PreProcessRegression: the one output alias Regress fetches."""
    if len(signature.inputs) != 1:
        raise Refused("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise Refused("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise Refused("No regression inputs found in SignatureDef (the one input must be "
                      f"aliased 'inputs', not {sorted(signature.inputs)})")
    if "outputs" not in signature.outputs:
        raise Refused("No regression outputs found in SignatureDef (the one output must be "
                      f"aliased 'outputs', not {sorted(signature.outputs)})")
    return ["outputs"]


def _serialized_examples(request_input) -> np.ndarray:
    """util.cc's InputToSerializedExampleTensor: one serialized tf.Example per example; with
    example_list_with_context, the context's bytes before each example's (they merge)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in listed.examples]
    else:
        serialized = []
    if not serialized:
        raise Refused("Input is empty.")
    return np.array(serialized, dtype=object)


def _shape(value: np.ndarray) -> str:  # TensorShape::DebugString: "[3,2]"
    return "[" + ",".join(str(d) for d in value.shape) + "]"


def _post_process_classification(tf, answered: dict, dtypes: dict, num_examples: int) -> None:
    """classifier.cc's PostProcessClassificationResult on the fetched classes/scores."""
    for alias, dtype in (("classes", tf.string), ("scores", tf.float32)):
        if alias not in dtypes:
            continue
        value = np.asarray(answered[alias])
        if value.ndim != 2:
            raise Refused(f"Expected Tensor shape: [batch_size num_classes] but got "
                          f"{_shape(value)} ({alias})")
        if dtypes[alias] != dtype:
            raise Refused(f"Expected {alias} Tensor of {_enum_name(dtype.as_datatype_enum)}. "
                          f"Got: {_enum_name(dtypes[alias].as_datatype_enum)}")
        if value.shape[0] != num_examples:
            raise Refused(f"Expected {alias} output batch size of {num_examples}. Got: "
                          f"{value.shape[0]}")
    if "classes" in dtypes and "scores" in dtypes:
        classes, scores = np.asarray(answered["classes"]), np.asarray(answered["scores"])
        if classes.shape[1] != scores.shape[1]:
            raise Refused(f"Tensors class and score should match in dim_size(1). Got "
                          f"{classes.shape[1]} vs. {scores.shape[1]}")


def _post_process_regression(tf, answered: dict, dtypes: dict, num_examples: int) -> None:
    """regressor.cc's PostProcessRegressionResult on the fetched `outputs`."""
    value = np.asarray(answered["outputs"])
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise Refused("Expected output Tensor shape to be either [batch_size] or "
                      f"[batch_size, 1] but got {_shape(value)}")
    if value.shape[0] != num_examples:
        raise Refused(f"Input batch size did not match output batch size: {num_examples} vs. "
                      f"{value.shape[0]}")
    if dtypes["outputs"] != tf.float32:
        raise Refused(f"Expected output Tensor of DT_FLOAT.  Got: "
                      f"{_enum_name(dtypes['outputs'].as_datatype_enum)}")


def plain(value) -> np.ndarray:
    """npz without pickles: strings as bytes, the rest as numpy has them."""
    value = np.asarray(value)
    if value.dtype.kind == "O":
        return value.astype(bytes)
    return value.astype(np.float32) if value.dtype.name == "bfloat16" else value


_main = main  # the name exporter/children.py runs in a forked child

if __name__ == "__main__":
    sys.exit(main())
