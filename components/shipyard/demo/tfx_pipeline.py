"""The reference TFX pipeline: the standard TFX pipeline, then ShipyardPusher.

    CsvExampleGen (the demo CSV, written here, or your data_root)
      -> Trainer (the module file shipyard.demo.trainer_module: run_fn trains the demo
         model and exports `serving_default` over serialized tf.Examples)
      -> ShipyardPusher (export with predict and classify endpoints, verify on CPU, MLflow run
         and version, publish, label)

The Trainer is TFX's own where it imports; without TensorFlow Data Validation (TFDV 1.21 ships
only glibc 2.39 wheels, and TFX's Trainer executor imports it) shipyard's ModuleTrainer runs
the same module file with TFX's own FnArgs (shipyard.tfx.trainer). Transform, StatisticsGen
and SchemaGen are left out: the module file has a fixed feature spec.

Used by `pipelines/tfx_pipeline.py` (run it locally) and `shipyard demo`. On Kubeflow, compile
the same pipeline with KubeflowV2DagRunner onto the shipyard image, with a data_root the
workers can read.
"""

# (No "from __future__ import annotations": TFX reads the types of component signatures.)
import json
from pathlib import Path
from typing import Optional

from tfx.components.example_gen.csv_example_gen.component import CsvExampleGen
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline

from shipyard.demo.spec import DEMO_NAME, DEMO_SPEC
from shipyard.tfx.component import ShipyardPusher
from shipyard.tfx.trainer import trainer_component

PIPELINE_NAME = "shipyard-reference"
# A module path rather than the file's path: it resolves wherever shipyard is installed (the
# shipyard image on Kubeflow too), where a file path from the compiling machine would not.
# TFX's Trainer and ModuleTrainer both take `run_fn` this way.
RUN_FN = "shipyard.demo.trainer_module.run_fn"
DEMO_CSV = "demo.csv"


def build_pipeline(root: Path, *, repository: str, tracking_uri: str,
                   model_name: str = DEMO_NAME, serving_label: Optional[str] = "stable",
                   seed: int = 0, data_root: Optional[str] = None,
                   sign_key: Optional[str] = None) -> tfx_pipeline.Pipeline:
    """The pipeline with its TFX state under `root`: pipeline-root/ (artifacts) and
    mlmd.sqlite (the SQLite MLMD store). Without `data_root`, the demo CSV (rows drawn with
    `seed`) is written to root/data/ for CsvExampleGen; `seed` also seeds the weights."""
    if data_root is None:
        from shipyard.demo.model import write_demo_csv

        write_demo_csv(root / "data" / DEMO_CSV, seed=seed)
        data_root = str(root / "data")
    example_gen = CsvExampleGen(input_base=data_root)
    trainer = trainer_component()(
        examples=example_gen.outputs["examples"], run_fn=RUN_FN,
        custom_config={"seed": seed})
    pusher = ShipyardPusher(
        # ExampleGen's examples verify the export (its held-out split) instead of generated
        # ones.
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        model_name=model_name,
        export_spec=json.dumps(DEMO_SPEC), repository=repository, tracking_uri=tracking_uri,
        serving_label=serving_label, sign_key=sign_key)
    return tfx_pipeline.Pipeline(
        pipeline_name=PIPELINE_NAME, pipeline_root=str(root / "pipeline-root"),
        components=[example_gen, trainer, pusher],
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
