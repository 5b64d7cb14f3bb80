"""The KFP v2 components and reference pipeline, compiled with accelerator settings. (Run with
kfp.local's SubprocessRunner: integration/test_kfp_pipeline.py.)"""

# (No "from __future__ import annotations": KFP reads the types of pipeline signatures.)
import json
import sys

import pytest
import yaml
from support.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "pipelines"))


def compiled(tmp_path, accelerator: str) -> list[dict]:
    import kfp_pipeline

    output = tmp_path / f"{accelerator}.yaml"
    assert kfp_pipeline.main(["--accelerator", accelerator, "--output", str(output),
                              "--image", "registry.example/shipyard:1"]) == 0
    return list(yaml.safe_load_all(output.read_text()))


def test_gpu_export_requests_an_accelerator(tmp_path):
    spec, *platform = compiled(tmp_path, "gpu")
    ship = spec["deploymentSpec"]["executors"]["exec-ship"]["container"]
    assert ship["image"] == "registry.example/shipyard:1"
    assert ship["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert ship["resources"]["accelerator"]["resourceCount"] == "1"
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "resources" not in train  # only the export runs on the accelerator
    assert spec["root"]["dag"]["tasks"]["ship"]["inputs"]["parameters"]["device"][
        "runtimeValue"]["constant"] == "/GPU:0"
    assert platform == []


def test_tpu_export_gets_gke_node_selectors_and_the_tpu_toleration(tmp_path):
    spec, platform = compiled(tmp_path, "tpu")
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-ship"]
    assert executor["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "1x1"}
    assert executor["tolerations"] == [{"effect": "NoSchedule", "key": "google.com/tpu",
                                        "operator": "Exists"}]
    ship = spec["deploymentSpec"]["executors"]["exec-ship"]["container"]
    assert ship["resources"]["accelerator"]["resourceType"] == "google.com/tpu"


def test_a_release_pipeline_chains_ship_canary_and_rollout_on_the_image(tmp_path):
    """All components compose: ship's version feeds the offline canary and the rollout, each
    task runs on the shipyard image, and only the export asks for the accelerator."""
    from kfp import compiler, dsl

    from shipyard.kfp.components import accelerate, make_components

    components = make_components("registry.example/shipyard:1")

    @dsl.pipeline(name="release")
    def release(model_uri: str, repository: str, examples: str, policy: str):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        shipped = components.ship(model=model.output, model_name="churn", export_spec="{}",
                                  repository=repository, tracking_uri="", serving_label="",
                                  device="/GPU:0")
        accelerate(shipped, "gpu")
        checked = components.validate(repository=repository, model_name="churn",
                                      version=shipped.outputs["Output"], examples=examples,
                                      against="champion", tracking_uri="", min_agreement=0.97,
                                      agreement_outputs="probs")
        offline = components.canary(repository=repository, model_name="churn",
                                    version=shipped.outputs["Output"], examples=examples,
                                    tracking_uri="", min_agreement=0.97).after(checked)
        components.rollout(model_name="churn", version=shipped.outputs["Output"],
                           policy=policy, namespace="ml", tracking_uri="").after(offline)

    output = tmp_path / "release.yaml"
    compiler.Compiler().compile(release, str(output))
    spec = yaml.safe_load(output.read_text())
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-ship", "exec-validate", "exec-canary", "exec-rollout"):
        assert executors[name]["container"]["image"] == "registry.example/shipyard:1"
    assert [n for n, e in executors.items()
            if "resources" in e.get("container", {})] == ["exec-ship"]
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("validate", "canary", "rollout"):
        version = tasks[name]["inputs"]["parameters"]["version"]["taskOutputParameter"]
        assert version == {"outputParameterKey": "Output", "producerTask": "ship"}
    assert tasks["rollout"]["dependentTasks"] == ["canary", "ship"]
    assert "offline_canary(" in " ".join(executors["exec-canary"]["container"]["command"])


def test_an_unknown_accelerator_is_refused():
    from shipyard.kfp.components import accelerate

    with pytest.raises(ValueError, match=r"accelerator: expected one of none, gpu, tpu, got "
                                         r"'fpga'"):
        accelerate(object(), "fpga")


def test_the_promotion_pipeline_copies_then_rolls_out_in_production(tmp_path):
    """copy (staging's champion by alias, into production, with the KFP job id) then rollout
    of the copied version with production's MLflow; built for kfp.local, no rollout."""
    from kfp import compiler

    from shipyard.demo.promotion_pipeline import DEFAULT_ROLLOUT_POLICY, build_pipeline
    from shipyard.rollout.policy import parse_policy

    output = tmp_path / "promotion.yaml"
    compiler.Compiler().compile(build_pipeline("registry.example/shipyard:1"), str(output))
    spec = yaml.safe_load(output.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert {n: e["container"]["image"] for n, e in executors.items()} == {
        "exec-copy": "registry.example/shipyard:1", "exec-rollout": "registry.example/shipyard:1"}
    assert "copy_version(" in " ".join(executors["exec-copy"]["container"]["command"])
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert sorted(n for n, p in inputs.items() if not p.get("isOptional")) == [
        "from_repo", "from_tracking_uri", "to_repo", "to_tracking_uri"]
    tasks = spec["root"]["dag"]["tasks"]
    copy = tasks["copy"]["inputs"]["parameters"]
    assert copy["alias"] == {"componentInputParameter": "source_alias"}
    assert copy["to_tracking_uri"] == {"componentInputParameter": "to_tracking_uri"}
    assert copy["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    rollout = tasks["rollout"]["inputs"]["parameters"]
    assert rollout["version"]["taskOutputParameter"] == {"outputParameterKey": "Output",
                                                         "producerTask": "copy"}
    assert rollout["tracking_uri"] == {"componentInputParameter": "to_tracking_uri"}
    assert rollout["registry_uri"] == {"componentInputParameter": "to_registry_uri"}
    assert tasks["rollout"]["dependentTasks"] == ["copy"]
    assert spec["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == \
        "NUMBER_INTEGER"
    copy_outputs = spec["components"]["comp-copy"]["outputDefinitions"]
    assert copy_outputs["artifacts"]["copied"]["artifactType"]["schemaTitle"] == "system.Model"
    # The default rollout policy is one a rollout accepts.
    assert [s.weight for s in parse_policy(yaml.safe_load(DEFAULT_ROLLOUT_POLICY)).steps] == \
        [10, 50]

    compiler.Compiler().compile(build_pipeline(rollout=False), str(output))
    local = yaml.safe_load(output.read_text())
    assert list(local["root"]["dag"]["tasks"]) == ["copy"]
    assert local["root"]["inputDefinitions"] == spec["root"]["inputDefinitions"]


def test_the_copy_component_mirrors_shipyard_copy():
    from shipyard.kfp.components import make_components

    inputs = make_components().copy.component_spec.inputs
    assert sorted(inputs) == sorted([
        "model_name", "version", "alias", "from_repo", "to_repo", "from_tracking_uri",
        "from_registry_uri", "to_tracking_uri", "to_registry_uri", "to_name", "to_alias",
        "reason", "pipeline_run_id", "serving_runtime", "allow_breaking"])
    assert (inputs["version"].default, inputs["alias"].default, inputs["to_alias"].default) == \
        (0, "", "candidate")


@pytest.fixture
def kfp_api(tmp_path, monkeypatch):
    from unit.test_schedule import KfpApiStub

    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads and writes ~/.config/kfp
    stub = KfpApiStub()
    yield stub
    stub.stop()


def schedule(*arguments: str):
    from click.testing import CliRunner

    from shipyard.cli import main

    return CliRunner().invoke(main, ["schedule", "create", "--cron", "0 3 * * *",
                                     "--pipeline", "promotion", *arguments])


def test_schedule_create_schedules_the_promotion_pipeline(kfp_api):
    result = schedule("--host", kfp_api.host, "--repository", "gs://prod-models",
                      "--tracking-uri", "http://mlflow.prod:5000", "--model-name", "churn",
                      "--param", "from_repo=gs://staging-models",
                      "--param", "from_tracking_uri=http://mlflow.staging:5000",
                      "--param", "namespace=ml", "--json")
    assert result.exit_code == 0, result.stderr or result.output
    assert json.loads(result.stdout)["name"] == "shipyard-promotion"
    (_, _, body), = [r for r in kfp_api.requests if "recurringruns" in r[1]]
    assert body["display_name"] == "shipyard-promotion"
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    assert body["runtime_config"]["parameters"] == {
        "to_repo": "gs://prod-models", "to_tracking_uri": "http://mlflow.prod:5000",
        "model_name": "churn", "from_repo": "gs://staging-models",
        "from_tracking_uri": "http://mlflow.staging:5000", "namespace": "ml"}
    assert set(body["pipeline_spec"]["root"]["dag"]["tasks"]) == {"copy", "rollout"}


@pytest.mark.parametrize("arguments, message", [
    (("--tracking-uri", "http://mlflow.prod:5000", "--param", "from_repo=gs://staging"),
     r"--param: the shipyard-promotion pipeline needs from_tracking_uri \(give --param "
     r"from_tracking_uri=\.\.\.\)"),
    (("--param", "from_repo=gs://s", "--param", "from_tracking_uri=http://s"),
     r"--param: the shipyard-promotion pipeline needs to_tracking_uri \(give "
     r"--tracking-uri\)"),
    (("--param", "from_rep=gs://staging"),
     r"--param: the shipyard-promotion pipeline has no parameter 'from_rep'; its parameters: "
     r"from_registry_uri, from_repo, "),
    (("--param", "to_repo=gs://elsewhere"), r"--param: to_repo is set by --repository"),
    (("--param", "from_repo"), r"--param: expected NAME=VALUE, got 'from_repo'"),
    (("--param", "reason=a", "--param", "reason=b"), r"--param: reason is given twice"),
    (("--accelerator", "gpu"), r"--accelerator: only the reference pipeline has it"),
])
def test_schedule_create_checks_the_promotion_pipelines_parameters_before_sending(
        arguments, message):
    import re

    result = schedule("--host", "http://127.0.0.1:1", "--repository", "gs://prod-models",
                      *arguments)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.stderr), result.stderr
