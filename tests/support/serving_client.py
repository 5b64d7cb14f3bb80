"""A TF Serving client call, as a serving user makes it (imports TensorFlow when called)."""

from __future__ import annotations

import numpy as np

# The input the sequential test models are asked about.
X = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)


def predict(address: str, name: str, *, label: str | None = None, version: int | None = None):
    """Predict on X through TF Serving's PredictionService: (the version that answered, output)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if label is not None:
        request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30)
    (output,) = response.outputs.values()
    return response.model_spec.version.value, tf.make_ndarray(output)

