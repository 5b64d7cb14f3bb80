"""POLICY.yaml: the canary's steps and gates, validated with pydantic. Pure.

    steps:                          # traffic weight on the canary, and how long to hold it
      - {weight: 10, pause_seconds: 120}
      - {weight: 50, pause_seconds: 300}
    gates:
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
    check_interval_seconds: 30
    no_data: pause                  # pause | fail | pass: what a check without data does
    max_checks_without_data: 10     # after this many, no data fails the rollout
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.core.errors import SpecError
from shipyard.core.images import TF_SERVING_GPU_IMAGE, TF_SERVING_IMAGE
from shipyard.core.spec import format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    weight: Annotated[int, Field(ge=1, le=100)]
    pause_seconds: Annotated[float, Field(ge=0)] = 60.0


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
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    agreement: Agreement | None = None


class Metrics(_Strict):
    prometheus_url: str | None = None  # None: scrape the canary pods' metrics endpoint


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


class RolloutPolicy(_Strict):
    steps: Annotated[list[Step], Field(min_length=1)]
    gates: Gates = Gates()
    metrics: Metrics = Metrics()
    serving: Serving = Serving()
    check_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    no_data: Literal["pause", "fail", "pass"] = "pause"
    max_checks_without_data: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _weights_rise(self) -> RolloutPolicy:
        weights = [s.weight for s in self.steps]
        if weights != sorted(weights):
            raise ValueError(f"steps: weights must not decrease, got {weights}")
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
