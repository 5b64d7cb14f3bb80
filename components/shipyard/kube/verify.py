"""The signature check before TF Serving starts on a version: an init container. Pure.

With the policy's `serving.verify_key_secret` (or `verify_key_configmap`), each TF Serving
Deployment (stable and canary) gets the init container `verify-signature`. It mounts the same
model volume as TF Serving, read-only, and the trust key (the item `verify_key_item` of that
Secret or ConfigMap, as /etc/shipyard/verify/verify_key.pem), and runs model-signing's own
CLI on the version the Deployment's models.config serves:

    python -m model_signing verify key /models/NAME/N \\
        --signature /models/NAME/N/assets.extra/model.sig \\
        --public_key /etc/shipyard/verify/verify_key.pem --no-ignore-git-paths

the check shipyard.signing.bundle.check_version makes: the signature covers every other file
of N, so a changed, added or missing file fails it, and so does a missing signature or another
key. `--no-ignore-git-paths` because shipyard signs with git paths included (without it, the
CLI would pass a version with an added `.gitattributes`); `--ignore_unsigned_files` is never
given. The CLI exits 1 on any failure; an init container that does not exit 0 keeps the pod's
app containers from starting, and the kubelet restarts it with back-off (Init:Error, then
Init:CrashLoopBackOff), so the pod never becomes ready and the Deployment's rolling update
(maxUnavailable 0) keeps the old pods serving. The CLI's message is the container's
termination message (FallbackToLogsOnError), which `kubectl describe pod` shows and
KubeCluster's wait reports.

The check reads files from the PVC: a repository that TF Serving reads from gs:// or s3://
(no PVC) is refused by the policy (rollout.policy.Serving) and here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.core.manifest import SIGNATURE_PATH

if TYPE_CHECKING:
    from shipyard.kube.manifests import ServingTarget

INIT_CONTAINER = "verify-signature"
KEY_VOLUME = "verify-key"
KEY_MOUNT = "/etc/shipyard/verify"
KEY_FILE = "verify_key.pem"  # the trust key's name in KEY_MOUNT, whatever its item is called


def enabled(target: ServingTarget) -> bool:
    """Whether `target`'s Deployments check their version's signature first."""
    if target.verify_key_secret and target.verify_key_configmap:
        raise ValueError("give at most one of verify_key_secret and verify_key_configmap")
    chosen = bool(target.verify_key_secret or target.verify_key_configmap)
    if chosen and (not target.pvc or "://" in target.model_root):
        raise ValueError(
            f"the signature check reads the version from the PVC; model_root "
            f"{target.model_root!r} with pvc {target.pvc!r} cannot be checked in the pod")
    return chosen


def verify_command(version_dir: str, public_key: str = f"{KEY_MOUNT}/{KEY_FILE}") -> list[str]:
    """model-signing's CLI checking `version_dir` against its signature with `public_key`."""
    return ["python", "-m", "model_signing", "verify", "key", version_dir,
            "--signature", f"{version_dir}/{SIGNATURE_PATH}",
            "--public_key", public_key, "--no-ignore-git-paths"]


def key_volume(target: ServingTarget) -> dict[str, Any]:
    """The trust key as a volume: the one item of the Secret or ConfigMap, as KEY_FILE. A
    missing Secret, ConfigMap or item keeps the pod from starting (ContainerCreating, with a
    FailedMount event), as a failing check does."""
    items = [{"key": target.verify_key_item, "path": KEY_FILE}]
    if target.verify_key_secret:
        return {"name": KEY_VOLUME,
                "secret": {"secretName": target.verify_key_secret, "items": items}}
    return {"name": KEY_VOLUME,
            "configMap": {"name": target.verify_key_configmap, "items": items}}


def init_container(target: ServingTarget, version: int,
                   model_mount: dict[str, Any]) -> dict[str, Any]:
    """The init container checking `version` (the one the Deployment's models.config serves),
    with TF Serving's read-only `model_mount` and the trust key. Its resources are TF
    Serving's: a pod's effective request is the larger of its init containers' and the sum
    of its app containers', so the check costs the pod no more than it asks already."""
    version_dir = f"{target.base_path}/{version}"
    return {
        "name": INIT_CONTAINER,
        "image": target.verify_image,
        "command": verify_command(version_dir),
        "resources": {"requests": dict(target.requests), "limits": dict(target.limits)},
        "securityContext": {"allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{**model_mount, "readOnly": True},
                         {"name": KEY_VOLUME, "mountPath": KEY_MOUNT, "readOnly": True}],
    }


def pod_patch(target: ServingTarget, version: int,
              model_mount: dict[str, Any]) -> dict[str, Any]:
    """What the check adds to a Deployment's pod template spec (also the k8s/ overlay's
    strategic-merge patch): the init container and the trust key's volume."""
    return {"initContainers": [init_container(target, version, model_mount)],
            "volumes": [key_volume(target)]}
