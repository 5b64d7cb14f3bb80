"""assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays on load,
so the first real request does not pay for graph initialisation."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from shipyard.core.spec import ExportSpec
from shipyard.exporter.samples import Sample

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many


def write_warmup(assets_extra: Path, model_name: str, calls: list[tuple[str, Sample]],
                 spec: ExportSpec) -> int:
    """Writes one record per (signature name, sample); returns the number of records.

    The record's kind follows the endpoint's: a PredictLog, or for classify and regress
    endpoints a ClassifyLog / RegressLog whose request carries the samples' examples in
    `input.example_list` (what TF Serving's Classify and Regress APIs take). A sample sent to
    serving_default carries the default endpoint's name, so its endpoint is found the same way.
    """
    endpoints = {e.name: e for e in spec.endpoints}
    assets_extra.mkdir(parents=True, exist_ok=True)
    records = calls[:MAX_WARMUP_RECORDS]
    with tf.io.TFRecordWriter(str(assets_extra / WARMUP_FILE)) as writer:
        for signature, sample in records:
            endpoint = endpoints[sample.endpoint]
            model_spec = model_pb2.ModelSpec(name=model_name, signature_name=signature)
            writer.write(_log(endpoint, model_spec, sample).SerializeToString())
    return len(records)


def _log(endpoint, model_spec, sample: Sample) -> prediction_log_pb2.PredictionLog:
    if endpoint.kind == "predict":
        request = predict_pb2.PredictRequest(model_spec=model_spec)
        dtypes = dict((name, decl.dtype) for name, decl in endpoint.signature_inputs())
        for name, value in sample.named.items():
            request.inputs[name].CopyFrom(
                tf.make_tensor_proto(value, dtype=tf.dtypes.as_dtype(dtypes[name])))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
    (serialized,) = sample.named.values()  # classify/regress: the one `inputs` tensor
    examples = [example_pb2.Example.FromString(bytes(s)) for s in serialized]
    if endpoint.kind == "classify":
        request = classification_pb2.ClassificationRequest(model_spec=model_spec)
        request.input.example_list.examples.extend(examples)
        return prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request))
    request = regression_pb2.RegressionRequest(model_spec=model_spec)
    request.input.example_list.examples.extend(examples)
    return prediction_log_pb2.PredictionLog(
        regress_log=prediction_log_pb2.RegressLog(request=request))
