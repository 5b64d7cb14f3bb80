"""The signature check in TF Serving's pods (kube/verify.py): the init container each rendered
Deployment gets from the policy's serving.verify_key_*, and the policy's refusals. The check's
command line run for real is tests/integration/test_verify_init_container.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.paths import REPO_ROOT

from shipyard.core.errors import SpecError
from shipyard.core.images import SHIPYARD_IMAGE
from shipyard.kube import verify
from shipyard.kube.manifests import (
    KUSTOMIZE_TARGET,
    VERIFY_KEY_EXAMPLE,
    ServingTarget,
    kustomize_tree,
    render,
)
from shipyard.rollout.policy import Serving, parse_policy
from shipyard.serving.config import model_serving, parse_config

SECRET = ServingTarget(name="churn", stable_version=3, canary_version=4, canary_weight=10,
                       verify_key_secret="churn-verify-key")


def deployments(target: ServingTarget) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(target) if o["kind"] == "Deployment"}


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def served_versions(target: ServingTarget, deployment: dict) -> list[str]:
    """The version directories the Deployment's models.config serves, as TF Serving reads
    them (base_path/N)."""
    config_map = next(v["configMap"]["name"] for v in pod_spec(deployment)["volumes"]
                      if v["name"] == "config")
    text = next(o for o in render(target) if o["kind"] == "ConfigMap"
                and o["metadata"]["name"] == config_map)["data"]["models.config"]
    (model,) = parse_config(text).model_config_list.config
    return [f"{model.base_path}/{v}" for v in model_serving(parse_config(text),
                                                            target.name).versions]


def test_each_deployment_checks_exactly_the_version_its_config_serves():
    found = deployments(SECRET)
    assert sorted(found) == ["churn", "churn-canary"]
    for name, deployment in found.items():
        (init,) = pod_spec(deployment)["initContainers"]
        (version_dir,) = served_versions(SECRET, deployment)
        assert version_dir == f"/models/churn/{3 if name == 'churn' else 4}"
        assert init["name"] == "verify-signature"
        assert init["image"] == SHIPYARD_IMAGE
        # model-signing's own CLI, key method, the whole directory: no file may be unsigned.
        assert init["command"] == [
            "python", "-m", "model_signing", "verify", "key", version_dir,
            "--signature", f"{version_dir}/assets.extra/model.sig",
            "--public_key", "/etc/shipyard/verify/verify_key.pem", "--no-ignore-git-paths"]
        assert not any("ignore_unsigned" in a or "ignore-paths" in a for a in init["command"])
        assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_check_mounts_tf_servings_model_volume_and_the_key_read_only():
    deployment = deployments(SECRET)["churn"]
    spec = pod_spec(deployment)
    (init,), (serving,) = spec["initContainers"], spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    model_mount = next(m for m in serving["volumeMounts"] if m["name"] == "models")
    assert init["volumeMounts"] == [
        model_mount, {"name": "verify-key", "mountPath": "/etc/shipyard/verify",
                      "readOnly": True}]
    assert all(m["readOnly"] is True for m in init["volumeMounts"])
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "shipyard-models",
                                                          "readOnly": True}
    assert volumes["verify-key"] == {"name": "verify-key", "secret": {
        "secretName": "churn-verify-key",
        "items": [{"key": "verify_key.pem", "path": "verify_key.pem"}]}}
    assert "verify-key" not in [m["name"] for m in serving["volumeMounts"]]


def test_a_configmap_an_item_and_an_image_come_from_the_policy_as_the_rollout_builds_them():
    policy = parse_policy({"steps": [{"weight": 10}], "serving": {
        "verify_key_configmap": "trust", "verify_key_item": "ca-2026.pem",
        "verify_image": "registry.example/shipyard@sha256:" + "0" * 64}})
    settings = policy.serving.model_dump()  # as steps/rollout.py builds the target
    settings.pop("rollout_timeout_seconds"), settings.pop("canary_grace_seconds")
    target = ServingTarget(name="churn", namespace="ml", canary_version=2, **settings)
    for deployment in deployments(target).values():
        spec = pod_spec(deployment)
        assert spec["initContainers"][0]["image"] == "registry.example/shipyard@sha256:" + "0" * 64
        assert {"name": "verify-key", "configMap": {"name": "trust", "items": [
            {"key": "ca-2026.pem", "path": "verify_key.pem"}]}} in spec["volumes"]


def test_without_a_trust_key_nothing_is_added():
    for deployment in deployments(replace(SECRET, verify_key_secret=None)).values():
        assert "initContainers" not in pod_spec(deployment)
        assert [v["name"] for v in pod_spec(deployment)["volumes"]] == ["config", "models"]


def test_the_gpu_settings_leave_the_check_alone():
    for deployment in deployments(replace(SECRET, gpu=True)).values():
        (init,) = pod_spec(deployment)["initContainers"]
        assert init["image"] == SHIPYARD_IMAGE and "nvidia.com/gpu" not in init["resources"][
            "limits"]


@pytest.mark.parametrize("target", [
    SECRET,
    replace(SECRET, verify_key_secret=None, verify_key_configmap="trust", gpu=True),
    replace(KUSTOMIZE_TARGET, verify_key_secret=VERIFY_KEY_EXAMPLE),
])
def test_the_deployments_with_the_check_validate_against_the_kubernetes_schemas(target):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    major, minor = (int(p) for p in latest_version().split(".")[:2])
    for deployment in deployments(target).values():
        for version in (f"{major}.{minor - back}.0" for back in range(3)):
            kubernetes_validate.validate(deployment, version, strict=True)


def test_the_k8s_overlay_adds_the_check_to_the_base():
    tree = kustomize_tree()
    assert "deployment-verify-signature.yaml" in tree[
        "overlays/verify-signature/kustomization.yaml"]
    assert "/models/model/1/assets.extra/model.sig" in tree[
        "overlays/verify-signature/deployment-verify-signature.yaml"]
    assert "initContainers" not in tree["base/deployment-model.yaml"]


def test_the_check_runs_in_shipyards_own_image():
    from shipyard.kfp.components import DEFAULT_IMAGE

    assert SHIPYARD_IMAGE == DEFAULT_IMAGE
    assert f"docker build -t {SHIPYARD_IMAGE} ." in (REPO_ROOT / "Dockerfile").read_text()
    assert "model-signing==" in (REPO_ROOT / "requirements.lock").read_text()


# --- the policy -------------------------------------------------------------------------------

def policy_with(**serving):
    return parse_policy({"steps": [{"weight": 10}], "serving": serving})


@pytest.mark.parametrize(("serving", "message"), [
    ({"verify_key_secret": "a", "verify_key_configmap": "b"},
     r"serving: give at most one of verify_key_secret and verify_key_configmap"),
    ({"verify_key_secret": "k", "pvc": None, "model_root": "gs://acme/models"},
     r"verify_key_secret/verify_key_configmap need the repository on a PVC.*cannot read "
     r"model_root 'gs://acme/models'.*serving.pvc: NAME"),
    ({"verify_key_configmap": "k", "pvc": None, "model_root": "s3://acme/models"},
     r"need the repository on a PVC.*s3://acme/models"),
    ({"verify_key_secret": "k", "pvc": None},
     r"need the repository on a PVC.*\(pvc None\)"),
    ({"verify_key_item": "other.pem"},
     r"verify_key_item names the trust key inside verify_key_secret or verify_key_configmap"),
    ({"verify_key_secret": "Trust_Key"}, r"serving\.verify_key_secret: String should match"),
    ({"verify_key_secret": "k", "verify_key_item": "keys/pub.pem"},
     r"serving\.verify_key_item: String should match"),
    ({"verify_key_secret": "k", "verify_image": ""}, r"serving\.verify_image"),
    ({"verify_key": "k"}, r"serving\.verify_key: unknown field"),
])
def test_the_policy_refuses_what_cannot_be_checked(serving, message):
    with pytest.raises(SpecError, match=message):
        policy_with(**serving)


def test_stored_serving_settings_read_back_the_same():
    # The controller stores Serving.model_dump() with the rollout and reads it back (steps/
    # rollout.py): every default is in it, verify_key_item's too.
    for serving in (Serving(), Serving(verify_key_secret="k"),
                    Serving(verify_key_configmap="c", verify_key_item="x.pem")):
        assert Serving.model_validate(serving.model_dump()) == serving


def test_the_target_refuses_what_the_policy_refuses():
    with pytest.raises(ValueError, match="at most one"):
        render(replace(SECRET, verify_key_configmap="trust"))
    with pytest.raises(ValueError, match="reads the version from the PVC"):
        render(replace(SECRET, pvc=None, model_root="gs://acme/models"))
    assert verify.enabled(SECRET) and not verify.enabled(ServingTarget())
