"""Warmup files (assets.extra/tf_serving_warmup_requests) for the tests of TF Serving's
load-time replay: TFRecord files of PredictionLog records, read and written with TensorFlow's
own TFRecord reader and writer (test_tf_serving_warmup.py, test_runtime_check.py).
TensorFlow is imported inside the helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


def read_records(version: Path) -> list:
    """The version's warmup records, as PredictionLog messages."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(raw)
            for raw in tf.compat.v1.io.tf_record_iterator(str(version / WARMUP))]


def write_records(version: Path, records) -> None:
    """Replaces the version's warmup file: each record a message or raw bytes."""
    import tensorflow as tf

    (version / WARMUP).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(version / WARMUP)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())


def copy_version(template: Path, target: Path, records=None) -> Path:
    """A copy of a SavedModel directory, with `records` as its warmup file when given."""
    shutil.copytree(template, target)
    if records is not None:
        write_records(target, records)
    return target


def example(x):
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=list(x)))}))


def classify_log(signature: str, xs=((0.25, 0.75), (1.0, -2.0))):
    """A ClassifyLog of example_list examples {x: xs[i]} for `signature`."""
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", signature
    request.input.example_list.examples.extend(example(x) for x in xs)
    return prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_log(signature: str, xs=((0.25, 0.75), (1.0, -2.0))):
    from tensorflow_serving.apis import prediction_log_pb2, regression_pb2

    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", signature
    request.input.example_list.examples.extend(example(x) for x in xs)
    return prediction_log_pb2.PredictionLog(
        regress_log=prediction_log_pb2.RegressLog(request=request))


def with_input_dtype(record, dtype):
    """A copy of a PredictLog record whose inputs are cast to `dtype` (a tf.DType)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    copy = prediction_log_pb2.PredictionLog()
    copy.CopyFrom(record)
    for alias, proto in record.predict_log.request.inputs.items():
        value = tf.make_ndarray(proto).astype(dtype.as_numpy_dtype)
        copy.predict_log.request.inputs[alias].CopyFrom(tf.make_tensor_proto(value, dtype))
    return copy
