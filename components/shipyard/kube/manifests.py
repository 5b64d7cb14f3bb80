"""TF Serving on Kubernetes, as plain dicts. Pure: the one source of truth for k8s/.

`render(target)` builds the objects shipyard applies for one model; `write_kustomize(root)`
writes the same objects as the kustomize tree in k8s/ (base and the canary, gpu and
verify-signature overlays; the last is kube/verify.py's signature check), and tests check
that `kubectl kustomize` of that tree gives exactly what `render` gives, so
the two cannot drift.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from shipyard.core.errors import UsageError
from shipyard.core.images import SHIPYARD_IMAGE, TF_SERVING_GPU_IMAGE, TF_SERVING_IMAGE
from shipyard.core.vocabulary import CANARY, STABLE
from shipyard.kube import verify

GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_MOUNT = "/config"
MODEL_MOUNT = "/models"
FIELD_MANAGER = "shipyard"
PUSHER = "shipyard-pusher"
MONITORING_PATH = "/monitoring/prometheus/metrics"
MONITORING_CONFIG = f'prometheus_config {{\n  enable: true\n  path: "{MONITORING_PATH}"\n}}\n'
# Every rendered config labels the version it serves, and TF Serving checks labels before it
# loads anything, at start-up too (server_core.cc: ServerCore::ReloadConfig calls
# UpdateModelVersionLabelMap() before AddModelsViaModelConfigList()). Without this flag
# a labelled version is not AVAILABLE yet on a cold start, so every pod start, restart and new
# canary pod would fail with FAILED_PRECONDITION. The flag allows a label that is new or
# unchanged on an unloaded version, never a move, so pushes still move labels in two steps.
ALLOW_UNAVAILABLE_LABELS = "--allow_version_labels_for_unavailable_models=true"


@dataclass(frozen=True)
class ServingTarget:
    """Where and how one model is served."""

    name: str = "model"
    namespace: str = "shipyard"
    image: str = TF_SERVING_IMAGE
    gpu_image: str = TF_SERVING_GPU_IMAGE
    replicas: int = 2
    # A PVC holding the repository (mounted at /models), or None to read `model_root`
    # directly (gs://bucket/models, s3://bucket/models).
    pvc: str | None = "shipyard-models"
    model_root: str = MODEL_MOUNT
    config_poll_seconds: int = 30
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "4Gi"})
    gateway: str = "shipyard-gateway"
    hostnames: tuple[str, ...] = ()
    gpu: bool = False
    stable_version: int = 1
    canary_version: int | None = None
    canary_weight: int = 0
    # The Gateway API release whose HTTPRoute CRD the cluster has (the policy's
    # serving.gateway_api_version): RequestMirror's `percent` is in its standard channel from
    # v1.3.0 on. mirror_percent > 0 (canary_weight 0) mirrors that share of the route's
    # requests to the canary's Service: the shadow step.
    gateway_api_version: str = "v1.3.0"
    mirror_percent: int = 0
    # With a Secret or a ConfigMap holding the trust key (the policy's serving.verify_key_*),
    # each Deployment first checks its version's signature in an init container (kube/verify.py).
    verify_key_secret: str | None = None
    verify_key_configmap: str | None = None
    verify_key_item: str = "verify_key.pem"
    verify_image: str = SHIPYARD_IMAGE

    @property
    def base_path(self) -> str:
        return f"{self.model_root.rstrip('/')}/{self.name}"


def models_config(target: ServingTarget, version: int, label: str) -> str:
    """The text-format ModelServerConfig a Deployment serves: one version, labelled."""
    from shipyard.serving.config import ModelServing, parse_config, render_config, with_model

    config = with_model(parse_config(""), target.name, target.base_path,
                        ModelServing((version,), {label: version}))
    return render_config(config)


def _labels(target: ServingTarget, track: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tf-serving", "app.kubernetes.io/instance": target.name,
            "app.kubernetes.io/managed-by": FIELD_MANAGER, "shipyard.dev/track": track}


def _meta(target: ServingTarget, name: str, track: str = STABLE) -> dict[str, Any]:
    return {"name": name, "namespace": target.namespace, "labels": _labels(target, track)}


def config_map_name(target: ServingTarget, track: str, version: int) -> str:
    """One ConfigMap per served version: a new version rolls the pods, which load it fresh
    (TF Serving moves a label only onto a loaded version, even with
    --allow_version_labels_for_unavailable_models, so a polled config that moved the label
    at once would be refused), and the old pods keep their config to the end."""
    suffix = "" if track == STABLE else "-canary"
    return f"{target.name}{suffix}-config-v{version}"


def _config_map(target: ServingTarget, track: str, version: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(target, config_map_name(target, track, version), track),
            "data": {"models.config": models_config(target, version, track),
                     "monitoring.config": MONITORING_CONFIG}}


def _deployment(target: ServingTarget, track: str) -> dict[str, Any]:
    suffix = "" if track == STABLE else "-canary"
    name = f"{target.name}{suffix}"
    version = target.stable_version if track == STABLE else target.canary_version
    selector = {"app.kubernetes.io/instance": target.name, "shipyard.dev/track": track}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(target, track, version)}}]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_MOUNT,
                                     "readOnly": True}]
    model_mount = {"name": "models", "mountPath": MODEL_MOUNT, "readOnly": True}
    if target.pvc:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": target.pvc,
                                                                     "readOnly": True}})
        mounts.append(model_mount)
    pod: dict[str, Any] = {"containers": [], "volumes": volumes}
    if verify.enabled(target):  # the version's signature is checked before TF Serving starts
        checked = verify.pod_patch(target, version, model_mount)
        # (the key's volume first: where kustomize's strategic merge puts the overlay's)
        pod = {"initContainers": checked["initContainers"], "containers": [],
               "volumes": checked["volumes"] + volumes}
    container = {
        "name": "tf-serving",
        "image": target.image,
        "args": [f"--port={GRPC_PORT}", f"--rest_api_port={REST_PORT}",
                 f"--model_config_file={CONFIG_MOUNT}/models.config",
                 f"--model_config_file_poll_wait_seconds={target.config_poll_seconds}",
                 ALLOW_UNAVAILABLE_LABELS,
                 "--enable_model_warmup=true",
                 f"--monitoring_config_file={CONFIG_MOUNT}/monitoring.config"],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "http", "containerPort": REST_PORT}],
        # AVAILABLE versions only: TF Serving answers 200 here once the model has loaded.
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{target.name}", "port": REST_PORT},
                           "initialDelaySeconds": 5, "periodSeconds": 5,
                           "failureThreshold": 3},
        "resources": {"requests": dict(target.requests), "limits": dict(target.limits)},
        "volumeMounts": mounts,
    }
    pod["containers"].append(container)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(target, name, track),
        "spec": {
            "replicas": target.replicas if track == STABLE else 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(target, track),
                             "annotations": {"shipyard.dev/version": str(version),
                                             "prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(REST_PORT),
                                             "prometheus.io/path": MONITORING_PATH}},
                "spec": pod,
            },
        },
    }


def _service(target: ServingTarget, track: str) -> dict[str, Any]:
    suffix = "" if track == STABLE else "-canary"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(target, f"{target.name}{suffix}", track),
            "spec": {"selector": {"app.kubernetes.io/instance": target.name,
                                  "shipyard.dev/track": track},
                     "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                               {"name": "http", "port": REST_PORT, "targetPort": "http"}]}}


def _disruption_budget(target: ServingTarget) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(target, target.name),
            "spec": {"minAvailable": 1,
                     "selector": {"matchLabels": {"app.kubernetes.io/instance": target.name,
                                                  "shipyard.dev/track": STABLE}}}}


# What the pusher does, kind by kind: nothing more (no wildcards).
PUSHER_RULES = [
    # Server-side apply is a PATCH (and creates what does not exist); label-selected
    # deletes of the canary list first; the rollout's state is read back with GET.
    {"apiGroups": [""], "resources": ["configmaps", "services"],
     "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]},  # metrics scrapes
    {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["create"]},  # predicts
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
     "verbs": ["create", "patch"]},
    # The route's status (Accepted, ResolvedRefs) is read back before a weight moves.
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
     "verbs": ["get", "create", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["get", "create", "update"]},
]


def rbac(namespace: str) -> list[dict[str, Any]]:
    meta = {"name": PUSHER, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": dict(meta), "rules": copy.deepcopy(PUSHER_RULES)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PUSHER},
         "subjects": [{"kind": "ServiceAccount", "name": PUSHER, "namespace": namespace}]},
    ]


# TF Serving's REST API (http_rest_api_handler.cc): /v1/models/NAME[/versions/N|/labels/L]
# [/metadata] and the same followed by :predict, :classify or :regress. The Gateway API's
# PathPrefix matches whole path elements ("/v1/models/m" matches "/v1/models/m/metadata", not
# "/v1/models/m:predict" nor "/v1/models/mx"), so the verbs on the model itself are Exact
# matches beside the prefix. Versions and labels are reached under the prefix.
REST_VERBS = ("predict", "classify", "regress")


def route_matches(name: str) -> list[dict[str, Any]]:
    prefix = f"/v1/models/{name}"
    return ([{"path": {"type": "PathPrefix", "value": prefix}}]
            + [{"path": {"type": "Exact", "value": f"{prefix}:{verb}"}} for verb in REST_VERBS])


def route(target: ServingTarget) -> dict[str, Any]:
    """Gateway API HTTPRoute splitting this model's REST traffic (its paths only, and its
    hostnames where given) between the stable and canary Services. Paths of versions and
    labels (…/versions/N:predict) are matched by the prefix too: requests that name a
    version reach whichever track serves it (TF Serving answers NOT_FOUND otherwise).
    With `mirror_percent`, the rule also mirrors that share of its requests to the canary
    (see mirror_filter); without, the route has no filter, so any mirror is cleared."""
    spec: dict[str, Any] = {"parentRefs": [{"name": target.gateway}]}
    if target.hostnames:
        spec["hostnames"] = list(target.hostnames)
    rule: dict[str, Any] = {"matches": route_matches(target.name)}
    if target.mirror_percent:
        if target.canary_weight:
            raise ValueError(f"a mirrored canary takes no weighted traffic: mirror_percent "
                             f"{target.mirror_percent} with canary_weight "
                             f"{target.canary_weight}")
        rule["filters"] = [mirror_filter(target)]
    rule["backendRefs"] = [
        {"name": target.name, "port": REST_PORT, "weight": 100 - target.canary_weight},
        {"name": canary_service(target.name), "port": REST_PORT,
         "weight": target.canary_weight}]
    spec["rules"] = [rule]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _meta(target, target.name), "spec": spec}


def canary_service(name: str) -> str:
    return f"{name}-canary"


# Gateway API, apis/v1/httproute_types.go: HTTPRequestMirrorFilter's `percent` ("Percent
# represents the percentage of requests that should be mirrored to BackendRef ... If neither
# field is specified, 100% of requests will be mirrored") is in the standard channel from
# v1.3.0 on; v1.2's standard CRD has no such field, and the API server prunes it there
# (so a route asking for 10 % would mirror everything).
MIRROR_PERCENT_SINCE = (1, 3)


def gateway_api_release(version: str) -> tuple[int, int]:
    """(major, minor) of a Gateway API release name: "v1.3.0" -> (1, 3)."""
    found = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?(-[0-9A-Za-z.-]+)?", version.strip())
    if found is None:
        raise UsageError(f"serving.gateway_api_version: expected a Gateway API release such "
                         f"as v1.3.0, got {version!r}")
    return int(found.group(1)), int(found.group(2))


def mirror_filter(target: ServingTarget) -> dict[str, Any]:
    """The rule-level RequestMirror filter of the shadow step: a copy of `mirror_percent` %
    of the rule's requests goes to the canary's Service; the users' requests themselves go
    to the backendRefs, where the canary's weight is 0.

    Users only ever see stable's answers: the Gateway API says of RequestMirror "Requests
    are sent to the specified destination, but responses from that destination are
    ignored" (HTTPRouteFilter.RequestMirror), and of the filter type "The responses from
    this backend MUST be ignored by the Gateway" (HTTPRouteFilterRequestMirror), both in
    apis/v1/httproute_types.go of v1.3.0. "Support: Extended": a Gateway that does not
    support it reports the route not Accepted, which the route's status gate turns into a
    ClusterError (and a rollback) before anything is judged."""
    percent = target.mirror_percent
    if not 1 <= percent <= 100:
        raise ValueError(f"mirror_percent: expected 1 to 100, got {percent}")
    mirror: dict[str, Any] = {"backendRef": {"name": canary_service(target.name),
                                             "port": REST_PORT}}
    if gateway_api_release(target.gateway_api_version) >= MIRROR_PERCENT_SINCE:
        mirror["percent"] = percent
    elif percent < 100:
        raise UsageError(
            f"serving.gateway_api_version is {target.gateway_api_version}: the Gateway API "
            f"has RequestMirror's `percent` in its standard channel only from v1.3.0 on, so "
            f"mirror: {percent} cannot be rendered (before v1.3 a mirror takes 100 % of the "
            "traffic). Install the Gateway API v1.3.0 CRDs or newer (standard channel) and "
            "set serving.gateway_api_version: v1.3.0, or use mirror: 100")
    # Before v1.3 a mirror without `percent` mirrors every request, which is what 100 asks.
    return {"type": "RequestMirror", "requestMirror": mirror}


def gpu_patch(target: ServingTarget) -> dict[str, Any]:
    """What the gpu overlay changes in a Deployment (a strategic-merge patch)."""
    return {"spec": {"template": {"spec": {
        "containers": [{"name": "tf-serving", "image": target.gpu_image,
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}]}}}}


def _apply_gpu(deployment: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` merged the way kustomize's strategic merge does for these fields."""
    merged = copy.deepcopy(deployment)
    pod, pod_patch = merged["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    container, container_patch = pod["containers"][0], pod_patch["containers"][0]
    container["image"] = container_patch["image"]
    container["resources"]["limits"].update(container_patch["resources"]["limits"])
    pod["nodeSelector"] = dict(pod_patch["nodeSelector"])
    pod["tolerations"] = copy.deepcopy(pod_patch["tolerations"])
    return merged


def render(target: ServingTarget, *, with_rbac: bool = True) -> list[dict[str, Any]]:
    """Every object for `target`: the stable track always; the canary track and the route
    when `canary_version` is set; GPU settings when `gpu`."""
    objects = list(rbac(target.namespace)) if with_rbac else []
    objects += [_config_map(target, STABLE, target.stable_version),
                _deployment(target, STABLE), _service(target, STABLE),
                _disruption_budget(target)]
    if target.canary_version is not None:
        objects += [_config_map(target, CANARY, target.canary_version),
                    _deployment(target, CANARY), _service(target, CANARY), route(target)]
    if target.gpu:
        patch = gpu_patch(target)
        objects = [_apply_gpu(o, patch) if o["kind"] == "Deployment" else o for o in objects]
    return objects


# --- k8s/: the same objects as a kustomize tree ---------------------------------------------

KUSTOMIZE_TARGET = ServingTarget()  # k8s/ serves model "model"; rename it in your overlay
CANARY_EXAMPLE_VERSION = 2
CANARY_EXAMPLE_WEIGHT = 10
VERIFY_KEY_EXAMPLE = "shipyard-verify-key"  # the Secret overlays/verify-signature reads


def kustomize_tree(target: ServingTarget = KUSTOMIZE_TARGET) -> dict[str, str]:
    """{relative path: file content} of k8s/."""
    base = render(replace(target, canary_version=None, gpu=False))
    canary = render(replace(target, canary_version=CANARY_EXAMPLE_VERSION,
                            canary_weight=CANARY_EXAMPLE_WEIGHT, gpu=False))
    canary_only = [o for o in canary if o not in base]
    files: dict[str, str] = {}
    _add_kustomization(files, "base", base)
    _add_kustomization(files, "overlays/canary", canary_only, bases=["../../base"])
    files["overlays/gpu/deployment-gpu.yaml"] = _yaml(
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": target.name, "namespace": target.namespace},
         **gpu_patch(target)})
    files["overlays/gpu/kustomization.yaml"] = _yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../../base"], "patches": [{"path": "deployment-gpu.yaml"}]})
    checked = replace(target, verify_key_secret=VERIFY_KEY_EXAMPLE)
    files["overlays/verify-signature/deployment-verify-signature.yaml"] = _yaml(
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": target.name, "namespace": target.namespace},
         "spec": {"template": {"spec": verify.pod_patch(
             checked, target.stable_version,
             {"name": "models", "mountPath": MODEL_MOUNT, "readOnly": True})}}})
    files["overlays/verify-signature/kustomization.yaml"] = _yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../../base"], "patches": [{"path": "deployment-verify-signature.yaml"}]})
    return {path: HEADER + text for path, text in sorted(files.items())}


def _add_kustomization(files: dict[str, str], directory: str, objects: list[dict[str, Any]],
                       bases: list[str] | None = None) -> None:
    """One file per object in `directory`, and the kustomization listing them after `bases`."""
    names = []
    for obj in objects:
        filename = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        files[f"{directory}/{filename}"] = _yaml(obj)
        names.append(filename)
    files[f"{directory}/kustomization.yaml"] = _yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [*(bases or []), *names]})


HEADER = ("# Generated by `python -m shipyard.kube.manifests k8s` from "
          "components/shipyard/kube/manifests.py;\n# edit that file, not this one "
          "(tests fail when the two differ).\n")


def _yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def write_kustomize(root: Path) -> list[Path]:
    written = []
    for relative, text in kustomize_tree().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for path in write_kustomize(Path(sys.argv[1] if len(sys.argv) > 1 else "k8s")):
        print(path)
