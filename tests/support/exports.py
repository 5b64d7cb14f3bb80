"""Exporting a test model through the library, and reading what an export wrote."""

from __future__ import annotations

from pathlib import Path

from shipyard.core.spec import parse_spec
from shipyard.steps.export import ExportRequest, export_model


def export(launcher, model: Path, spec: dict, repo: Path, name: str = "m", **options):
    """`export_model` of MODEL under SPEC into REPO as NAME, with the session's verifiers."""
    request = ExportRequest(model=model, spec=parse_spec(spec), repo=repo, name=name, **options)
    return export_model(request, launch_verifier=launcher)


def read_warmup(version_dir: Path):
    """The PredictionLogs of a version's warmup file. Imports TensorFlow."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
