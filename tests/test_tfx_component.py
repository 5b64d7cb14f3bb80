"""The TFX component under LocalDagRunner with a SQLite MLMD store, and compiled for Kubeflow
with KubeflowV2DagRunner. (`tfx.v1` is not imported: its extensions need TFDV, which this
environment leaves out; the modules below are what it re-exports.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.integration

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}


def pipeline(root: Path, model_dir: Path, *, blessed: int | None, repo: Path,
             tracking_uri: str):
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.types import standard_artifacts

    from shipyard.tfx.component import ShipyardPusher

    model = Importer(source_uri=str(model_dir),
                     artifact_type=standard_artifacts.Model).with_id("model")
    components = [model]
    blessing = None
    if blessed is not None:
        (root / "blessing").mkdir(exist_ok=True)
        blessing = Importer(
            source_uri=str(root / "blessing"),
            artifact_type=standard_artifacts.ModelBlessing,
            custom_properties={"blessed": blessed}).with_id("blessing")
        components.append(blessing)
    pusher = ShipyardPusher(
        model=model.outputs["result"],
        model_blessing=blessing.outputs["result"] if blessing else None,
        model_name="tfx-m", export_spec=yaml.safe_dump(SPEC), repository=str(repo),
        tracking_uri=tracking_uri, serving_label="stable")
    components.append(pusher)
    return tfx_pipeline.Pipeline(
        pipeline_name="shipyard-test", pipeline_root=str(root / "pipeline-root"),
        components=components,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            str(root / "mlmd.sqlite")))


def pushed_artifacts(root: Path):
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    config = metadata.sqlite_metadata_connection_config(str(root / "mlmd.sqlite"))
    store = metadata_store.MetadataStore(config)
    return store.get_artifacts_by_type("PushedModel"), store.get_artifacts_by_type("Model")


@pytest.fixture
def model_dir(models, tmp_path):
    target = tmp_path / "trained"
    target.mkdir()
    shutil.copy(models.path("sequential"), target / "model.keras")
    return target


def test_the_component_ships_a_model_and_records_it_in_mlmd(model_dir, tmp_path):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    repo = tmp_path / "repo"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    LocalDagRunner().run(
        pipeline(tmp_path, model_dir, blessed=1, repo=repo, tracking_uri=uri))

    pushed, exported = pushed_artifacts(tmp_path)
    assert len(pushed) == 1
    props = pushed[0].custom_properties
    assert props["pushed"].int_value == 1
    assert props["pushed_version"].string_value == "1"
    assert props["pushed_destination"].string_value == str((repo / "tfx-m" / "1").resolve())
    assert props["registered_model_version"].int_value == 1
    run_id = props["mlflow_run_id"].string_value
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version("tfx-m", "1").run_id == run_id
    shipped = [a for a in exported if "registered_model_version" in a.custom_properties]
    assert len(shipped) == 1
    assert (Path(shipped[0].uri) / "Format-Serving" / "saved_model.pb").is_file()
    config = (repo / "models.config").read_text()
    assert 'name: "tfx-m"' in config  # the label step ran (loaded; labelled on the next run)


def test_an_unblessed_model_is_not_pushed(model_dir, tmp_path):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    repo = tmp_path / "repo"
    LocalDagRunner().run(
        pipeline(tmp_path, model_dir, blessed=0, repo=repo,
                 tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    pushed, _ = pushed_artifacts(tmp_path)
    assert pushed[0].custom_properties["pushed"].int_value == 0
    assert "pushed_version" not in pushed[0].custom_properties
    assert not repo.exists()


def test_the_reference_pipeline_compiles_for_kubeflow(tmp_path):
    """The reference pipeline (the one `shipyard demo` runs under LocalDagRunner) compiled
    with KubeflowV2DagRunner onto the shipyard image."""
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import (
        KubeflowV2DagRunner, KubeflowV2DagRunnerConfig,
    )

    from shipyard.tfx.pipeline import build_pipeline

    output = tmp_path / "pipeline.json"
    runner = KubeflowV2DagRunner(
        config=KubeflowV2DagRunnerConfig(default_image="europe-docker.pkg.dev/acme/shipyard:1"),
        output_filename=str(output))
    runner.run(build_pipeline(tmp_path, repository="gs://acme-models/serving",
                              tracking_uri="http://mlflow:5000", serving_label="canary"))
    compiled = json.loads(output.read_text())
    spec = compiled.get("pipelineSpec", compiled)
    executors = spec["deploymentSpec"]["executors"]
    pusher = next(e for name, e in executors.items() if "ShipyardPusher" in name)
    assert pusher["container"]["image"] == "europe-docker.pkg.dev/acme/shipyard:1"
    assert "shipyard.tfx.component.Executor" in json.dumps(pusher)
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ShipyardPusher"]["dependentTasks"] == ["TrainDemoModel"]
    parameters = tasks["ShipyardPusher"]["inputs"]["parameters"]
    assert parameters["repository"]["runtimeValue"]["constantValue"]["stringValue"] == \
        "gs://acme-models/serving"
    assert parameters["serving_label"]["runtimeValue"]["constantValue"]["stringValue"] == \
        "canary"
    assert "model_name" in parameters and "export_spec" in parameters


def test_the_reference_pipeline_script_documents_its_options(capsys):
    # `shipyard demo` runs the pipeline it builds (tests/test_demo.py); this is its wrapper.
    sys.path.insert(0, str(REPO_ROOT / "pipelines"))
    import tfx_pipeline

    with pytest.raises(SystemExit) as exit_info:
        tfx_pipeline.main(["--help"])
    assert exit_info.value.code == 0
    assert "--workdir" in capsys.readouterr().out
