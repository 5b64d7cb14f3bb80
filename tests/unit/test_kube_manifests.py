"""k8s/ and components/shipyard/kube/manifests.py: one source of truth, valid objects."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import pytest
import yaml
from support.paths import REPO_ROOT

from shipyard.kube.manifests import (
    CANARY_EXAMPLE_VERSION,
    CANARY_EXAMPLE_WEIGHT,
    KUSTOMIZE_TARGET,
    PUSHER_RULES,
    VERIFY_KEY_EXAMPLE,
    ServingTarget,
    kustomize_tree,
    render,
)
from shipyard.serving.config import ModelServing, model_serving, parse_config

K8S = REPO_ROOT / "k8s"
OVERLAYS = {
    "base": KUSTOMIZE_TARGET,
    "overlays/canary": replace(KUSTOMIZE_TARGET, canary_version=CANARY_EXAMPLE_VERSION,
                               canary_weight=CANARY_EXAMPLE_WEIGHT),
    "overlays/gpu": replace(KUSTOMIZE_TARGET, gpu=True),
    "overlays/verify-signature": replace(KUSTOMIZE_TARGET, verify_key_secret=VERIFY_KEY_EXAMPLE),
}


def canonical(objects: list[dict]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objects)


def test_committed_k8s_tree_is_what_the_python_renders():
    tree = kustomize_tree()
    committed = {p.relative_to(K8S).as_posix(): p.read_text()
                 for p in K8S.rglob("*.yaml")}
    assert committed == tree, ("k8s/ differs from shipyard.kube.manifests; regenerate it with "
                               "`.venv/bin/python -m shipyard.kube.manifests k8s`")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("directory", sorted(OVERLAYS))
def test_kubectl_kustomize_builds_exactly_the_rendered_objects(directory):
    built = subprocess.run(["kubectl", "kustomize", str(K8S / directory)], check=True,
                           capture_output=True, text=True).stdout
    objects = [o for o in yaml.safe_load_all(built) if o]
    assert canonical(objects) == canonical(render(OVERLAYS[directory]))


@pytest.mark.parametrize("target", [
    ServingTarget(name="churn", namespace="ml", stable_version=3),
    ServingTarget(name="churn", canary_version=4, canary_weight=25, gpu=True),
    ServingTarget(name="churn", pvc=None, model_root="gs://acme-models"),
])
def test_every_object_validates_against_the_kubernetes_schemas(target):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    newest = latest_version()
    major, minor = (int(p) for p in newest.split(".")[:2])
    versions = [f"{major}.{minor - back}.0" for back in range(3)]
    unchecked = set()
    for obj in render(target):
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unchecked.add(obj["kind"])  # CRDs: the core schemas do not describe them
    assert unchecked <= {"HTTPRoute"}


def test_each_track_serves_its_version_under_its_label():
    objects = {(o["kind"], o["metadata"]["name"]): o
               for o in render(ServingTarget(name="churn", stable_version=3, canary_version=4,
                                             canary_weight=25))}
    stable = parse_config(objects[("ConfigMap", "churn-config-v3")]["data"]["models.config"])
    canary = parse_config(objects[("ConfigMap", "churn-canary-config-v4")]["data"]
                          ["models.config"])
    assert model_serving(stable, "churn") == ModelServing((3,), {"stable": 3})
    assert model_serving(canary, "churn") == ModelServing((4,), {"canary": 4})
    weights = [b["weight"] for b in objects[("HTTPRoute", "churn")]["spec"]["rules"][0]
               ["backendRefs"]]
    assert weights == [75, 25]
    args = objects[("Deployment", "churn")]["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--model_config_file=", "--model_config_file_poll_wait_seconds=",
                 "--enable_model_warmup=true", "--monitoring_config_file="):
        assert any(a.startswith(flag) for a in args), flag


@pytest.mark.parametrize("target", [
    *OVERLAYS.values(),
    ServingTarget(name="churn", canary_version=4, canary_weight=25, gpu=True),
    ServingTarget(name="churn", pvc=None, model_root="gs://acme-models"),
])
def test_every_tf_serving_container_allows_its_labels_before_the_versions_load(target):
    # Each ConfigMap labels its version, and TF Serving checks labels before loading, at start-up
    # too: without this flag every pod start is refused (integration/test_cold_start.py starts them).
    # Spelled as main.cc defines it; a misspelled flag is ignored by TF Serving.
    deployments = [o for o in render(target) if o["kind"] == "Deployment"]
    assert len(deployments) == (2 if target.canary_version else 1)
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"].count("--allow_version_labels_for_unavailable_models=true") == 1


def test_every_start_command_the_docs_give_passes_the_label_flag():
    # A reader copies these: a start command without the flag fails on shipyard's configs.
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    blocks = [b for b in text.split("\n\n")
              if "--model_config_file=" in b or "tensorflow_model_server " in b]
    assert len(blocks) >= 3  # the push section's sentence and "Starting TF Serving"'s examples
    for block in blocks:
        assert "--allow_version_labels_for_unavailable_models=true" in block, block


def test_reading_the_repository_from_a_bucket_mounts_no_volume():
    deployment = next(o for o in render(ServingTarget(name="churn", pvc=None,
                                                      model_root="gs://acme-models"))
                      if o["kind"] == "Deployment")
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["config"]
    config = next(o for o in render(ServingTarget(name="churn", pvc=None,
                                                  model_root="gs://acme-models"))
                  if o["kind"] == "ConfigMap")
    assert 'base_path: "gs://acme-models/churn"' in config["data"]["models.config"]


def test_the_pusher_role_names_every_kind_and_verb_it_uses_and_no_wildcard():
    for rule in PUSHER_RULES:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    role = next(o for o in render(ServingTarget()) if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == "shipyard"
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert "patch" in granted[("apps", "deployments")]  # server-side apply is a PATCH
    assert "update" in granted[("coordination.k8s.io", "leases")]
