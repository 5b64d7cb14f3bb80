"""The reference TFX pipeline: train a small model, then ship it with ShipyardPusher.

    TrainDemoModel (stands in for a team's Trainer: a Model artifact holding model.keras)
      -> ShipyardPusher (export, verify on CPU, MLflow run and version, publish, label)

Used by `pipelines/tfx_pipeline.py` (run it locally) and `shipyard demo`. On Kubeflow, compile
the same pipeline with KubeflowV2DagRunner onto the shipyard image.
"""

# (No "from __future__ import annotations": TFX reads the types of component signatures.)
import json
from pathlib import Path
from typing import Optional

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import standard_artifacts

from shipyard.demo import DEMO_NAME, DEMO_SPEC
from shipyard.tfx.component import ShipyardPusher

PIPELINE_NAME = "shipyard-reference"


@component
def TrainDemoModel(model: OutputArtifact[standard_artifacts.Model],  # noqa: N802
                   seed: Parameter[int] = 0) -> None:
    """Stands in for a team's Trainer: the demo model, saved as model.keras."""
    from shipyard.export.demo_model import train_demo_model

    Path(model.uri).mkdir(parents=True, exist_ok=True)
    train_demo_model(Path(model.uri) / "model.keras", seed=seed)


def build_pipeline(root: Path, *, repository: str, tracking_uri: str,
                   model_name: str = DEMO_NAME, serving_label: Optional[str] = "stable",
                   seed: int = 0) -> tfx_pipeline.Pipeline:
    """The pipeline with its TFX state under `root`: pipeline-root/ (artifacts) and
    mlmd.sqlite (the SQLite MLMD store)."""
    trainer = TrainDemoModel(seed=seed)
    pusher = ShipyardPusher(
        model=trainer.outputs["model"], model_name=model_name,
        export_spec=json.dumps(DEMO_SPEC), repository=repository, tracking_uri=tracking_uri,
        serving_label=serving_label)
    return tfx_pipeline.Pipeline(
        pipeline_name=PIPELINE_NAME, pipeline_root=str(root / "pipeline-root"),
        components=[trainer, pusher],
        metadata_connection_config=metadata_config(root))


def metadata_config(root: Path):  # -> ConnectionConfig
    return metadata.sqlite_metadata_connection_config(str(root / "mlmd.sqlite"))


def last_push(root: Path) -> dict:
    """What the newest ShipyardPusher execution recorded in MLMD: Pusher's properties plus
    the MLflow run and version."""
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(metadata_config(root))
    pushed = max(store.get_artifacts_by_type("PushedModel"), key=lambda a: a.id)
    props = pushed.custom_properties
    document = {"pushed": props["pushed"].int_value, "uri": pushed.uri,
                "mlmd": str(root / "mlmd.sqlite")}
    if document["pushed"]:
        document.update(
            pushed_version=props["pushed_version"].string_value,
            pushed_destination=props["pushed_destination"].string_value,
            mlflow_run_id=props["mlflow_run_id"].string_value,
            registered_model_version=props["registered_model_version"].int_value)
    return document
