"""What a rollout check measures on a real cluster: the canary's TF Serving metrics, and
stable/canary agreement on sample requests. Adapters behind rollout.controller.Observer.

Metrics: from a Prometheus server (`metrics.prometheus_url`, queried over the last check
interval; the canary's series are told apart by a `pod` label starting with NAME-canary-, as
annotation-based scraping labels them), or by scraping the canary pods'
/monitoring/prometheus/metrics through the API server, pod by pod, and differencing
consecutive scrapes. Either way the same window gives the error rate, the p99 latency and
the number of requests the canary served (kube.metrics says what TF Serving counts; a
request mirrored to the canary is one of them), which the gates' min_requests judges.
Agreement: each sample request (one JSON object per line, TF Serving's
REST predict body, e.g. {"instances": [[0.1, 0.2, 0.3]]}) goes to the stable and the canary
Service through the API server's service proxy, and the predictions are compared.

Failures while measuring never stop the controller: a metrics endpoint that cannot be read is
no data; a canary that answers a predict with an error, or with outputs of another shape,
fails the gates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shipyard.kube.manifests import MONITORING_PATH, REST_PORT
from shipyard.kube.metrics import (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    Scrape,
    Window,
    parse_scrape,
    per_pod_window,
)
from shipyard.rollout.gates import Observation
from shipyard.rollout.policy import RolloutPolicy

log = logging.getLogger(__name__)
BASELINE_WAIT_S = 10.0  # the first scrape of a rollout needs a second one to diff against
PROXY_HINT = (" (the pod proxy needs the API server to reach the pods' port 8501; clusters "
              "whose control plane cannot, such as private GKE clusters, give no data this "
              "way: set metrics.prometheus_url in the rollout policy)")


class ClusterObserver:
    def __init__(self, api: Any, namespace: str, policy: RolloutPolicy,
                 sleep: Callable[[float], None] | None = None):
        import time

        self.api = api
        self.namespace = namespace
        self.policy = policy
        self.sleep = sleep or time.sleep
        self._last: dict[str, Scrape] | None = None

    def observe(self, name: str, state: Any) -> Observation:
        measured = self._metrics(name)
        top1, max_abs, errors = self._agreement(name)
        return Observation(error_rate=measured.error_rate,
                           p99_latency_ms=measured.p99_latency_ms, requests=measured.requests,
                           top1_agreement=top1, max_abs_diff=max_abs, errors=errors)

    # --- metrics ------------------------------------------------------------------------
    def _metrics(self, name: str) -> Window:
        try:
            if self.policy.metrics.prometheus_url:
                return prometheus_window(self.policy.metrics.prometheus_url, name,
                                         self.policy.check_interval_seconds)
            if self._last is None:  # no baseline yet: take one, and diff against it soon
                self._last = self._scrape_pods(name)
                self.sleep(min(BASELINE_WAIT_S, self.policy.check_interval_seconds))
            previous, self._last = self._last, self._scrape_pods(name)
            return per_pod_window(previous, self._last)
        except Exception as err:  # unreadable metrics are no data, not a dead controller
            log.warning("cannot read the metrics of %s's canary: %s%s", name, err,
                        "" if self.policy.metrics.prometheus_url else PROXY_HINT)
            return Window(None, None, None)

    def _scrape_pods(self, name: str) -> dict[str, Scrape]:
        from kubernetes import client

        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/instance={name},shipyard.dev/track=canary")
        scrapes = {}
        for pod in pods.items:
            path = (f"/api/v1/namespaces/{self.namespace}/pods/{pod.metadata.name}:{REST_PORT}"
                    f"/proxy{MONITORING_PATH}")
            try:
                scrapes[pod.metadata.uid] = parse_scrape(self._call("GET", path), name)
            except Exception as err:  # a restarting pod: no data from it this time
                log.warning("cannot scrape %s through the API server's pod proxy: %s%s",
                            pod.metadata.name, err, PROXY_HINT)
        if not pods.items:
            log.warning("no canary pod of %s to scrape (label shipyard.dev/track=canary)", name)
        return scrapes

    # --- agreement ----------------------------------------------------------------------
    def _agreement(self, name: str) -> tuple[float | None, float | None, tuple[str, ...]]:
        agreement = self.policy.gates.agreement
        if agreement is None:
            return None, None, ()
        stable, canary = [], []
        for line in Path(agreement.samples).read_text().splitlines():
            if not line.strip():
                continue
            try:
                stable.append(self._predict(name, name, line))
            except Exception as err:  # the stable track's trouble is not the canary's fault
                log.warning("stable %s did not answer a sample: %s", name, err)
                continue
            try:
                canary.append(self._predict(f"{name}-canary", name, line))
            except Exception as err:
                return None, None, (f"the canary failed a sample request: {err}",)
        if not stable:
            return None, None, ()
        try:
            top1, worst = compare_predictions(stable, canary)
        except ValueError as err:
            return None, None, (str(err),)
        return top1, worst, ()

    def _predict(self, service: str, model: str, body: str) -> Any:
        path = (f"/api/v1/namespaces/{self.namespace}/services/{service}:{REST_PORT}/proxy"
                f"/v1/models/{model}:predict")
        return predictions_of(json.loads(self._call("POST", path, json.loads(body))))

    def _call(self, method: str, path: str, body: Any = None) -> str:
        """A raw call through the API server (the generated proxy methods of kubernetes
        26.1 take no body and mangle JSON replies)."""
        response = self.api.call_api(path, method, body=body, auth_settings=["BearerToken"],
                                     header_params={"Content-Type": "application/json",
                                                    "Accept": "*/*"},
                                     _preload_content=False, _request_timeout=30)
        data = response[0].data if isinstance(response, tuple) else response.data
        return data.decode() if isinstance(data, bytes) else data


def predictions_of(answer: dict[str, Any]) -> list[Any]:
    """The per-instance predictions of a TF Serving REST predict answer. Pure.

    TF Serving answers a row-format request ({"instances": ...}) with {"predictions": ...}
    and a columnar one ({"inputs": ...}) with {"outputs": ...}
    (http_rest_api_handler.cc, json_tensor.cc: MakeJsonFromTensors). Columnar outputs of a
    multi-output model are {name: [per instance]}: they become rows, as "predictions" has them.
    """
    if "predictions" in answer:
        return answer["predictions"]
    if "outputs" not in answer:
        raise ValueError("the answer has neither 'predictions' nor 'outputs': "
                         + str(answer.get("error", answer))[:200])
    outputs = answer["outputs"]
    if isinstance(outputs, dict):
        names = sorted(outputs)
        count = len(outputs[names[0]]) if names else 0
        return [{key: outputs[key][i] for key in names} for i in range(count)]
    return outputs


def compare_predictions(stable: list[Any], canary: list[Any]) -> tuple[float, float]:
    """(top-1 agreement, max abs difference) over every instance of every request. Pure.
    Outputs of different shapes are refused (ValueError), never broadcast."""
    agree, total, worst = 0, 0, 0.0
    for a, b in zip(stable, canary):
        a_arr = np.asarray(_numeric(a), dtype=np.float64)
        b_arr = np.asarray(_numeric(b), dtype=np.float64)
        if a_arr.shape != b_arr.shape:
            raise ValueError(f"the canary answers with shape {list(b_arr.shape)} where the "
                             f"stable version answers {list(a_arr.shape)}")
        worst = max(worst, float(np.abs(a_arr - b_arr).max(initial=0.0)))
        rows_a = a_arr.reshape(a_arr.shape[0], -1) if a_arr.ndim else a_arr.reshape(1, 1)
        rows_b = b_arr.reshape(b_arr.shape[0], -1) if b_arr.ndim else b_arr.reshape(1, 1)
        agree += int((rows_a.argmax(-1) == rows_b.argmax(-1)).sum())
        total += rows_a.shape[0]
    return agree / total, worst


def _numeric(predictions: Any) -> Any:
    """Predictions of a multi-output model are dicts: compare their values in key order."""
    if predictions and isinstance(predictions[0], dict):
        return [[v for _, v in sorted(p.items())] for p in predictions]
    return predictions


def prometheus_queries(name: str, seconds: float) -> dict[str, str]:
    span = f"{max(int(seconds), 30)}s"
    pods = f'model_name="{name}",pod=~"{name}-canary-.*"'
    total = f"sum(rate({REQUEST_COUNT}{{{pods}}}[{span}]))"
    # The REST GETs of model status answered OK (readiness probes), as metrics.is_status_read
    # tells them in a scrape; `or vector(0)` where there are none.
    reads = f'{REQUEST_LATENCY}_count{{{pods},API="",entrypoint="REST"}}'
    return {
        # No failed request means no failed series at all: count that as 0, not as no data.
        "error_rate": (f'(sum(rate({REQUEST_COUNT}{{{pods},status!="OK"}}[{span}])) '
                       f"or vector(0)) / {total} > -1"),
        "p99": (f"histogram_quantile(0.99, sum by (le) "
                f"(rate({REQUEST_LATENCY}_bucket{{{pods}}}[{span}]))) / 1000"),
        # Empty (unknown) when Prometheus has no series of the canary at all.
        "requests": (f"sum(increase({REQUEST_COUNT}{{{pods}}}[{span}])) "
                     f"- (sum(increase({reads}[{span}])) or vector(0))"),
    }


def prometheus_window(url: str, name: str, seconds: float) -> Window:
    """Error rate, p99 (ms) and requests of the canary pods over the last `seconds` (at
    least 30 s), from Prometheus."""
    import requests

    values: dict[str, float | None] = {}
    for key, query in prometheus_queries(name, seconds).items():
        response = requests.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query},
                                timeout=10)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        value = float(result[0]["value"][1]) if result else None
        values[key] = value if value is None or np.isfinite(value) else None
    served = values["requests"]
    # increase() extrapolates to the window's edges: not a whole number, and slightly
    # below 0 where the reads' series grew faster than the requests' in the same span.
    return Window(values["error_rate"], values["p99"],
                  None if served is None else max(served, 0.0))
