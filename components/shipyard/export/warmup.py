"""assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays on load,
so the first real request does not pay for graph initialisation."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from shipyard.export.samples import Sample

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many


def write_warmup(assets_extra: Path, model_name: str, calls: list[tuple[str, Sample]],
                 dtypes: dict[str, dict[str, str]]) -> int:
    """Writes one PredictRequest per (signature name, sample); returns the number of records.

    `dtypes` maps endpoint -> signature input name -> declared dtype. A sample sent to
    serving_default carries the default endpoint's name, so its dtypes are found the same way.
    """
    assets_extra.mkdir(parents=True, exist_ok=True)
    records = calls[:MAX_WARMUP_RECORDS]
    with tf.io.TFRecordWriter(str(assets_extra / WARMUP_FILE)) as writer:
        for signature, sample in records:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for name, value in sample.named.items():
                dtype = tf.dtypes.as_dtype(dtypes[sample.endpoint][name])
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(records)
