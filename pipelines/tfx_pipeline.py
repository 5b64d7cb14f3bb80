"""The reference TFX pipeline: train a small model, then ship it with ShipyardPusher.

    train (the demo model, a Model artifact holding model.keras) -> ShipyardPusher (export,
    verify on CPU, MLflow run and version, publish, models.config label)

Run here:   .venv/bin/python pipelines/tfx_pipeline.py --workdir .shipyard/tfx
(LocalDagRunner, SQLite MLMD at WORKDIR/mlmd.sqlite, MLflow at WORKDIR/mlflow.db, models under
WORKDIR/models). On Kubeflow, compile it with KubeflowV2DagRunner onto the shipyard image.
"""

import argparse
import json
import sys
from pathlib import Path

from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import standard_artifacts

from shipyard.demo import DEMO_SPEC
from shipyard.tfx.component import ShipyardPusher


@component
def TrainDemoModel(model: OutputArtifact[standard_artifacts.Model]) -> None:  # noqa: N802
    """Stands in for a team's Trainer: the demo model, saved as model.keras."""
    from shipyard.export.demo_model import train_demo_model

    Path(model.uri).mkdir(parents=True, exist_ok=True)
    train_demo_model(Path(model.uri) / "model.keras")


def build_pipeline(workdir: Path, *, model_name: str = "demo-model",
                   serving_label: str | None = "stable") -> tfx_pipeline.Pipeline:
    trainer = TrainDemoModel()
    pusher = ShipyardPusher(
        model=trainer.outputs["model"], model_name=model_name,
        export_spec=json.dumps(DEMO_SPEC), repository=str(workdir / "models"),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", serving_label=serving_label)
    return tfx_pipeline.Pipeline(
        pipeline_name="shipyard-reference", pipeline_root=str(workdir / "pipeline-root"),
        components=[trainer, pusher],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite")))


def main(argv: list[str] | None = None) -> int:
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".shipyard/tfx")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    LocalDagRunner().run(build_pipeline(workdir))
    print(f"models under {workdir / 'models'}, MLMD at {workdir / 'mlmd.sqlite'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
