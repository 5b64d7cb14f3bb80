"""POLICY.yaml: the canary's steps and gates, validated with pydantic. Pure.

    steps:                          # in order; each step is one of:
      - {mirror: 20, pause_seconds: 300}   # shadow: weight 0, 20% of stable's traffic copied
                                           #   to the canary (mirror steps come first)
      - {approval: true, timeout_seconds: 3600}  # wait for `rollout approve` (abort on timeout)
      - {weight: 10, pause_seconds: 120}   # traffic weight on the canary, and how long to hold it
      - {weight: 50, pause_seconds: 300}
    gates:
      min_requests: 100             # fewer canary requests in a check: error/latency no data
      max_error_rate: 0.01          # canary's share of non-OK requests during the step
      max_p99_latency_ms: 250       # canary's p99 request latency during the step
      agreement:                    # stable vs canary on sample requests
        samples: samples.jsonl      # one {"instances": [...]}-style JSON request per line
        min_top1: 0.95              # or max_abs_diff: 0.01
    metrics:
      prometheus_url: http://prometheus.monitoring:9090   # or leave out: scrape the pods
    serving:                        # how the tracks are deployed (defaults shown)
      image: tensorflow/serving:2.19.0
      replicas: 2
      pvc: shipyard-models          # the repository's PVC, mounted at /models; or null and
      model_root: /models           #   model_root: gs://bucket/models
      gateway: shipyard-gateway
      hostnames: []                 # route only these hosts (and the model's REST paths)
      rollout_timeout_seconds: 600  # how long a Deployment may take to become ready
      canary_grace_seconds: 15      # the canary's Service outlives its last weight change
      gateway_api_version: v1.3.0   # the cluster's Gateway API (RequestMirror percent: v1.3+)
      verify_key_secret: null       # a Secret (or verify_key_configmap: a ConfigMap) with the
      verify_key_item: verify_key.pem #   trust key: an init container checks the signature of
      verify_image: ghcr.io/shipyard-mlops/shipyard:0.1.0  # each pod's version (kube/verify.py)
    notify: [https://hooks.example.com/shipyard]   # CloudEvents receivers (and SHIPYARD_NOTIFY)
    verify_key: keys/shipyard-pub.pem  # trust key (relative to this file): `rollout start`
                                    #   verifies the version's signature before deploying it
    check_interval_seconds: 30
    no_data: pause                  # pause | fail | pass: what a check without data does
    max_checks_without_data: 10     # after this many, no data fails the rollout
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.core.errors import SpecError
from shipyard.core.images import SHIPYARD_IMAGE, TF_SERVING_GPU_IMAGE, TF_SERVING_IMAGE
from shipyard.core.spec import format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


WEIGHT, MIRROR, APPROVAL = "weight", "mirror", "approval"


class Step(_Strict):
    """One step: exactly one of `weight` (the canary's share of the traffic), `mirror` (the
    share of stable's traffic copied to the canary, whose answers nobody sees) or
    `approval: true` (wait for `rollout approve`)."""

    weight: Annotated[int, Field(ge=1, le=100)] | None = None
    mirror: Annotated[int, Field(ge=1, le=100)] | None = None
    approval: Literal[True] | None = None
    pause_seconds: Annotated[float, Field(ge=0)] = 60.0
    timeout_seconds: Annotated[float, Field(gt=0)] | None = None  # approval steps only

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        given = [k for k in (WEIGHT, MIRROR, APPROVAL) if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of weight, mirror and approval: true"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.approval and "pause_seconds" in self.model_fields_set:
            raise ValueError("an approval step waits for `shipyard rollout approve`, not "
                             "pause_seconds; use timeout_seconds to bound the wait")
        if self.timeout_seconds is not None and not self.approval:
            raise ValueError("timeout_seconds bounds an approval step's wait; this step has "
                             "none (use pause_seconds)")
        return self

    @property
    def kind(self) -> str:
        return WEIGHT if self.weight is not None else MIRROR if self.mirror else APPROVAL


class Agreement(_Strict):
    samples: str
    min_top1: Annotated[float, Field(ge=0, le=1)] | None = None
    max_abs_diff: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> Agreement:
        if (self.min_top1 is None) == (self.max_abs_diff is None):
            raise ValueError("give exactly one of min_top1 and max_abs_diff")
        return self


class Gates(_Strict):
    # Fewer canary requests than this in a check's window: the error and latency gates have
    # no data (the policy's no_data applies), rather than judging on a handful.
    min_requests: Annotated[int, Field(ge=1)] | None = None
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    agreement: Agreement | None = None


class Metrics(_Strict):
    prometheus_url: str | None = None  # None: scrape the canary pods' metrics endpoint


_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a Secret's or ConfigMap's name (DNS-1123)
VERIFY_KEY_ITEM = "verify_key.pem"


class Serving(_Strict):
    """How the tracks are deployed (kube.manifests.ServingTarget's settings)."""

    image: str = TF_SERVING_IMAGE
    gpu_image: str = TF_SERVING_GPU_IMAGE
    gpu: bool = False
    replicas: Annotated[int, Field(ge=1)] = 2
    pvc: str | None = "shipyard-models"
    model_root: str = "/models"
    gateway: str = "shipyard-gateway"
    # The route matches only this model's REST paths; with hostnames, only those hosts too
    # (the way to route gRPC per model, whose paths do not name it).
    hostnames: tuple[str, ...] = ()
    config_poll_seconds: Annotated[int, Field(ge=1)] = 30
    # The controller's own settings (not the objects'):
    rollout_timeout_seconds: Annotated[float, Field(gt=0)] = 600
    canary_grace_seconds: Annotated[float, Field(ge=0)] = 15
    # The Gateway API release the cluster serves: RequestMirror's `percent` is in its
    # standard channel from v1.3.0 (before it, a mirror copies all requests).
    gateway_api_version: Annotated[str, Field(pattern=r"^v\d+\.\d+(\.\d+)?$")] = "v1.3.0"
    # The signature check before TF Serving starts (kube/verify.py): the trust key is the
    # item `verify_key_item` of this Secret or ConfigMap; the check runs in `verify_image`.
    verify_key_secret: Annotated[str, Field(pattern=_K8S_NAME, max_length=253)] | None = None
    verify_key_configmap: Annotated[str, Field(pattern=_K8S_NAME, max_length=253)] | None = None
    verify_key_item: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$",
                                          max_length=253)] = VERIFY_KEY_ITEM
    verify_image: Annotated[str, Field(min_length=1)] = SHIPYARD_IMAGE

    @model_validator(mode="after")
    def _verify_key_source(self) -> Serving:
        if self.verify_key_secret and self.verify_key_configmap:
            raise ValueError("give at most one of verify_key_secret and verify_key_configmap "
                             "(the Secret or the ConfigMap holding the trust key)")
        if not (self.verify_key_secret or self.verify_key_configmap):
            if self.verify_key_item != VERIFY_KEY_ITEM:
                raise ValueError("verify_key_item names the trust key inside "
                                 "verify_key_secret or verify_key_configmap; set one of them")
            return self
        if self.pvc is None or "://" in self.model_root:
            raise ValueError(
                "verify_key_secret/verify_key_configmap need the repository on a PVC: the "
                "signature check runs model-signing's CLI on the version's files, mounted "
                f"read-only from serving.pvc, and cannot read model_root {self.model_root!r} "
                f"(pvc {self.pvc!r}). Serve from a PVC (serving.pvc: NAME, model_root: "
                "/models), or leave these out and verify before the rollout (--verify-key, "
                "or the policy's verify_key)")
        return self

    @property
    def mirror_percent_supported(self) -> bool:
        major, minor = (int(n) for n in re.findall(r"\d+", self.gateway_api_version)[:2])
        return (major, minor) >= (1, 3)


class RolloutPolicy(_Strict):
    steps: Annotated[list[Step], Field(min_length=1)]
    gates: Gates = Gates()
    metrics: Metrics = Metrics()
    serving: Serving = Serving()
    check_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    no_data: Literal["pause", "fail", "pass"] = "pause"
    max_checks_without_data: Annotated[int, Field(ge=1)] = 10
    notify: tuple[str, ...] = ()  # CloudEvents receivers, beside --notify and SHIPYARD_NOTIFY
    # The trust key the version's signature must verify with before `rollout start` deploys
    # it (a PEM public key or CA certificate; relative to the policy file). --verify-key
    # overrides it; without either, $SHIPYARD_VERIFY_KEY.
    verify_key: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _steps_in_order(self) -> RolloutPolicy:
        weights = [s.weight for s in self.steps if s.weight is not None]
        if weights != sorted(weights):
            raise ValueError(f"steps: weights must not decrease, got {weights}")
        kinds = [s.kind for s in self.steps]
        if MIRROR in kinds and WEIGHT in kinds and (
                max(i for i, k in enumerate(kinds) if k == MIRROR)
                > kinds.index(WEIGHT)):
            raise ValueError("steps: mirror steps come before the first weight step (the "
                             "mirror is removed when the canary first takes traffic)")
        partial = [s.mirror for s in self.steps if s.mirror is not None and s.mirror < 100]
        if partial and not self.serving.mirror_percent_supported:
            raise ValueError(
                f"steps: mirror {partial[0]} needs RequestMirror's percent, which the Gateway "
                f"API has from v1.3.0; serving.gateway_api_version is "
                f"{self.serving.gateway_api_version}: upgrade the Gateway API, or mirror 100")
        return self


def parse_policy(data: object, *, source: str = "policy") -> RolloutPolicy:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with a 'steps' list at the top level, "
                        f"got {type(data).__name__}")
    try:
        return RolloutPolicy.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source, "the rollout policy")) from None


def load_policy(path: str | Path) -> RolloutPolicy:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SpecError(f"policy {path}: cannot read it ({err.strerror})", param="policy") from None
    except yaml.YAMLError as err:
        raise SpecError(f"policy {path}: not valid YAML: {err}", param="policy") from None
    policy = parse_policy(data, source=str(path))
    if policy.verify_key is not None:
        # Relative to the policy file, as gates.agreement.samples; read when the rollout
        # starts (signing.keys.trust_key), checked to exist now.
        key = (path.parent / Path(policy.verify_key).expanduser()).resolve()
        if not key.is_file():
            raise SpecError(f"{path}: verify_key: {key} is not a file (a PEM public key or "
                            "CA certificate, relative to the policy file)")
        policy = policy.model_copy(update={"verify_key": str(key)})
    agreement = policy.gates.agreement
    if agreement is None:
        return policy
    # Relative to the policy file, and checked now: not after the canary has traffic.
    samples = (path.parent / agreement.samples).resolve()
    try:
        lines = [line for line in samples.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise SpecError(f"{path}: gates.agreement.samples: cannot read {samples} "
                        f"({err.strerror})") from None
    for number, line in enumerate(lines, 1):
        try:
            body = json.loads(line)
        except json.JSONDecodeError as err:
            raise SpecError(f"{samples}:{number}: not JSON ({err})") from None
        if not isinstance(body, dict) or not ({"instances", "inputs"} & set(body)):
            raise SpecError(f"{samples}:{number}: expected a TF Serving REST predict body, "
                            'e.g. {"instances": [[0.1, 0.2, 0.3]]}')
    if not lines:
        raise SpecError(f"{path}: gates.agreement.samples: {samples} holds no request")
    return policy.model_copy(update={"gates": policy.gates.model_copy(update={
        "agreement": agreement.model_copy(update={"samples": str(samples)})})})
