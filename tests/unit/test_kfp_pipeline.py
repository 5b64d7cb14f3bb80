"""The KFP v2 components and reference pipeline, compiled with accelerator settings. (Run with
kfp.local's SubprocessRunner: integration/test_kfp_pipeline.py.)"""

# (No "from __future__ import annotations": KFP reads the types of pipeline signatures.)
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
