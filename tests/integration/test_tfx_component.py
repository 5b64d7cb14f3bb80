"""The TFX component under LocalDagRunner with a SQLite MLMD store, and compiled for Kubeflow
with KubeflowV2DagRunner. (`tfx.v1` is not imported: its extensions need TFDV, which this
environment leaves out; the modules below are what it re-exports.)"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from support.paths import REPO_ROOT
from support.specs import SEQUENTIAL_SPEC as SPEC
from support.tfx_pipelines import by_component, pipeline, pushed_artifacts


def value_kinds(artifact, names) -> dict[str, str]:
    return {name: artifact.custom_properties[name].WhichOneof("value") for name in names}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def signatures(directory: Path) -> dict[str, tuple]:
    """Each signature's inputs and outputs (names, dtypes, shapes) as TF Serving sees them."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory))

    def specs(structure):
        return sorted((name, spec.dtype.name, tuple(spec.shape.as_list()))
                      for name, spec in structure.items())

    return {key: (specs(fn.structured_input_signature[1]), specs(fn.structured_outputs))
            for key, fn in loaded.signatures.items()}


@pytest.fixture
def model_dir(models, tmp_path):
    target = tmp_path / "trained"
    target.mkdir()
    shutil.copy(models.path("sequential"), target / "model.keras")
    return target


@pytest.fixture
def trainer_model_dir(models, tmp_path):
    """A Model artifact as TFX's Trainer writes it: the SavedModel under Format-Serving/."""
    target = tmp_path / "trainer-model"
    shutil.copytree(models.saved_model(), target / "Format-Serving")
    return target


# The Trainer's SavedModel (Keras `model.export()`) has signatures `serve` and
# `serving_default` over `input_layer`: the export re-declares the same endpoint.
TRAINER_SPEC = {"endpoints": [{"name": "serve", "method": "serve", "inputs": [
    {"name": "input_layer", "shape": [None, 3], "dtype": "float32"}]}]}


def test_beside_tfx_pusher_the_records_and_the_pushed_model_match(trainer_model_dir, tmp_path):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    repo = tmp_path / "repo"
    serving = tmp_path / "tfx-pusher-serving"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    LocalDagRunner().run(pipeline(tmp_path, trainer_model_dir, blessed=1, repo=repo,
                                  tracking_uri=uri, tfx_pusher_to=serving, spec=TRAINER_SPEC))

    pushed, exported = pushed_artifacts(tmp_path)
    pushed = by_component(pushed)
    assert sorted(pushed) == ["Pusher", "ShipyardPusher"]
    ours, theirs = pushed["ShipyardPusher"], pushed["Pusher"]
    pusher_properties = ["pushed", "pushed_destination", "pushed_version"]
    # Pusher's properties (and the orchestrator's tfx_version, is_external) with the same value
    # types; ours adds three of its own.
    assert set(pusher_properties) <= set(theirs.custom_properties)
    assert set(ours.custom_properties) == set(theirs.custom_properties) | {
        "serving_label_state", "mlflow_run_id", "registered_model_version"}
    assert value_kinds(ours, pusher_properties) == value_kinds(theirs, pusher_properties) == {
        "pushed": "int_value", "pushed_destination": "string_value",
        "pushed_version": "string_value"}
    assert ours.custom_properties["pushed"].int_value == \
        theirs.custom_properties["pushed"].int_value == 1
    timestamp = theirs.custom_properties["pushed_version"].string_value
    assert theirs.custom_properties["pushed_destination"].string_value == \
        str(serving / timestamp)

    props = ours.custom_properties
    version_dir = (repo / "tfx-m" / "1").resolve()
    assert props["pushed_version"].string_value == "1"
    assert props["pushed_destination"].string_value == str(version_dir)
    # No serving_address: the label step stops after the load step (push's complete: false).
    assert props["serving_label_state"].string_value == "pending"
    assert props["registered_model_version"].int_value == 1
    run_id = props["mlflow_run_id"].string_value

    # Both artifacts hold the pushed SavedModel at their root, as Pusher's copy_dir leaves it.
    ours_dir, theirs_dir = Path(ours.uri), Path(theirs.uri)
    assert (theirs_dir / "saved_model.pb").is_file() and (ours_dir / "saved_model.pb").is_file()
    assert signatures(ours_dir) == signatures(theirs_dir)
    assert set(signatures(ours_dir)) == {"serve", "serving_default"}
    # Ours is the published version, file for file, hard-linked (no second copy).
    assert files_under(ours_dir) == files_under(version_dir)
    assert "assets.extra/shipyard.json" in files_under(ours_dir)
    for name in files_under(version_dir):
        assert os.stat(ours_dir / name).st_ino == os.stat(version_dir / name).st_ino, name
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version("tfx-m", "1").run_id == run_id
    shipped = [a for a in exported if "registered_model_version" in a.custom_properties]
    assert len(shipped) == 1
    assert (Path(shipped[0].uri) / "Format-Serving" / "saved_model.pb").is_file()
    config = (repo / "models.config").read_text()
    assert 'name: "tfx-m"' in config  # the label step ran (loaded; labelled on the next run)
    assert "stable" not in config


def test_artifacts_in_an_object_store_are_read_from_and_written_to_it(trainer_model_dir,
                                                                      tmp_path, monkeypatch):
    """A pipeline root in an object store (gs://, s3://) gives artifacts URLs for uris: the
    executor downloads the Model, and writes exported_model and pushed_model there, not into
    a local directory named after the scheme. fsspec's in-memory store stands in for one."""
    import fsspec
    import mlflow
    from tfx.types import standard_artifacts

    from shipyard.tfx.component import EXPORTED_MODEL, MODEL, PUSHED_MODEL, Executor, model_path

    monkeypatch.chdir(tmp_path)  # a `Path(uri)` would create ./memory:/ here
    store = fsspec.filesystem("memory")
    root = f"memory://pipeline-root-{tmp_path.name}"
    store.put(f"{trainer_model_dir}/", f"{root}/Trainer/model/1", recursive=True)
    model, exported, pushed = (standard_artifacts.Model(), standard_artifacts.Model(),
                               standard_artifacts.PushedModel())
    model.uri = f"{root}/Trainer/model/1"
    exported.uri = f"{root}/ShipyardPusher/exported_model/2"
    pushed.uri = f"{root}/ShipyardPusher/pushed_model/2"
    repo = tmp_path / "repo"

    Executor().Do({MODEL: [model]}, {EXPORTED_MODEL: [exported], PUSHED_MODEL: [pushed]},
                  {"model_name": "tfx-m", "export_spec": yaml.safe_dump(TRAINER_SPEC),
                   "repository": str(repo),
                   "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})

    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == str(repo / "tfx-m" / "1")
    published = files_under(repo / "tfx-m" / "1")
    for uri in (pushed.uri, f"{exported.uri}/Format-Serving"):
        prefix = store._strip_protocol(uri) + "/"
        assert {f[len(prefix):] for f in store.find(uri)} == published, uri
    assert not [p for p in tmp_path.rglob("memory:*")]  # nothing written locally under the URL
    # The source is recorded where it lives, not as the temporary download it was loaded from.
    inside = model_path(str(trainer_model_dir)).relative_to(trainer_model_dir).as_posix()
    source = f"{model.uri}/{inside}" if inside != "." else model.uri
    manifest = json.loads((repo / "tfx-m" / "1" / "assets.extra" / "shipyard.json").read_text())
    assert manifest["source"]["path"] == source
    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        pushed.get_string_custom_property("mlflow_run_id"))
    assert run.data.params["source.path"] == source


def test_with_a_server_the_label_moves_and_serving_label_state_is_applied(model_dir, tmp_path,
                                                                          tf_serving):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from shipyard.serving.config import ModelServing, model_serving, parse_config

    repo = tmp_path / "repo"
    LocalDagRunner().run(pipeline(tmp_path, model_dir, blessed=1, repo=repo,
                                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  serving_address=tf_serving.address))
    pushed, _ = pushed_artifacts(tmp_path)
    assert pushed[0].custom_properties["serving_label_state"].string_value == "applied"
    assert pushed[0].custom_properties["pushed"].int_value == 1
    config = parse_config((repo / "models.config").read_text())
    assert model_serving(config, "tfx-m") == ModelServing((1,), {"stable": 1})
    assert tf_serving.reload_requests[-1] == config  # the server has the labelled config
    # The .keras source: the artifact holds the published SavedModel, not the .keras file.
    assert files_under(Path(pushed[0].uri)) == files_under(repo / "tfx-m" / "1")


def test_an_unblessed_model_is_not_pushed_by_either_pusher(model_dir, tmp_path):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    repo = tmp_path / "repo"
    serving = tmp_path / "tfx-pusher-serving"
    LocalDagRunner().run(
        pipeline(tmp_path, model_dir, blessed=0, repo=repo,
                 tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", tfx_pusher_to=serving))
    pushed, _ = pushed_artifacts(tmp_path)
    pushed = by_component(pushed)
    ours, theirs = pushed["ShipyardPusher"], pushed["Pusher"]
    # Pusher's _MarkNotPushed: `pushed` 0 and none of the other properties, no files.
    assert value_kinds(ours, ours.custom_properties) == \
        value_kinds(theirs, theirs.custom_properties)
    for artifact in (ours, theirs):
        assert artifact.custom_properties["pushed"].int_value == 0
        assert "pushed_version" not in artifact.custom_properties
        assert not files_under(Path(artifact.uri))
    assert "serving_label_state" not in ours.custom_properties
    assert not repo.exists() and not serving.exists()


def examples_artifact(uri: Path, splits: list[str] | None):
    from tfx.types import artifact_utils, standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = str(uri)
    if splits is not None:
        examples.split_names = artifact_utils.encode_split_names(splits)
    return examples


@pytest.mark.parametrize(("splits", "expected"), [
    (["train", "eval"], "Split-eval"),  # the held-out split, as ExampleGen names it
    (["train", "test"], "Split-train"),  # no eval split: the first
    (None, ""),  # no split names (say, imported): the directory itself
])
def test_the_examples_channel_gives_the_export_one_split(tmp_path, splits, expected):
    from tfx.types import standard_artifacts

    from shipyard.tfx.component import EXAMPLES, MODEL, export_request

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    properties = {"export_spec": yaml.safe_dump(SPEC), "repository": str(tmp_path / "repo"),
                  "model_name": "tfx-m"}
    inputs = {MODEL: [model], EXAMPLES: [examples_artifact(tmp_path / "examples", splits)]}
    request = export_request(inputs, properties)
    assert request.examples == str(tmp_path / "examples" / expected)
    assert request.warmup_from_examples is False  # real examples may hold personal data
    assert export_request(inputs, {**properties, "warmup_from_examples": 1}) \
        .warmup_from_examples is True
    assert export_request({MODEL: [model]}, properties).examples is None


def test_the_reference_pipeline_compiles_for_kubeflow(tmp_path):
    """The reference pipeline (the one `shipyard demo` runs under LocalDagRunner) compiled
    with KubeflowV2DagRunner onto the shipyard image."""
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import (
        KubeflowV2DagRunner,
        KubeflowV2DagRunnerConfig,
    )

    from shipyard.demo.tfx_pipeline import build_pipeline

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
    # After the Trainer: TFX's own where TFDV imports, else ModuleTrainer (shipyard.tfx.trainer).
    assert {"Trainer", "ModuleTrainer"} & set(tasks["ShipyardPusher"]["dependentTasks"])
    parameters = tasks["ShipyardPusher"]["inputs"]["parameters"]
    assert parameters["repository"]["runtimeValue"]["constantValue"]["stringValue"] == \
        "gs://acme-models/serving"
    assert parameters["serving_label"]["runtimeValue"]["constantValue"]["stringValue"] == \
        "canary"
    assert "model_name" in parameters and "export_spec" in parameters


def test_the_reference_pipeline_script_documents_its_options(capsys):
    # `shipyard demo` runs the pipeline it builds (e2e/test_demo.py); this is its wrapper.
    sys.path.insert(0, str(REPO_ROOT / "pipelines"))
    import tfx_pipeline

    with pytest.raises(SystemExit) as exit_info:
        tfx_pipeline.main(["--help"])
    assert exit_info.value.code == 0
    assert "--workdir" in capsys.readouterr().out
