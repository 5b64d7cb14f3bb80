"""What a rollout check measures on a real cluster: the canary's TF Serving metrics, and
stable/canary agreement on sample requests. Adapters behind rollout.controller.Observer.

Metrics: from a Prometheus server (`metrics.prometheus_url`, queried over the last check
interval), or by scraping the canary pods' /monitoring/prometheus/metrics through the API
server and differencing consecutive scrapes. Agreement: each sample request (one JSON object
per line, TF Serving's REST predict body, e.g. {"instances": [[0.1, 0.2, 0.3]]}) is sent to
the stable and the canary Service through the API server's service proxy, and the
predictions compared: top-1 agreement, or the max absolute difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.kube.manifests import MONITORING_PATH, REST_PORT
from shipyard.rollout.gates import Observation
from shipyard.rollout.metrics import REQUEST_COUNT, REQUEST_LATENCY, Scrape, parse_scrape, window
from shipyard.rollout.policy import RolloutPolicy


class ClusterObserver:
    def __init__(self, api: Any, namespace: str, policy: RolloutPolicy):
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.policy = policy
        self._last: Scrape | None = None

    def observe(self, name: str, state: Any) -> Observation:
        error_rate, p99 = self._metrics(name)
        top1, max_abs = self._agreement(name)
        return Observation(error_rate=error_rate, p99_latency_ms=p99, top1_agreement=top1,
                           max_abs_diff=max_abs)

    # --- metrics ------------------------------------------------------------------------
    def _metrics(self, name: str) -> tuple[float | None, float | None]:
        if self.policy.metrics.prometheus_url:
            return prometheus_window(self.policy.metrics.prometheus_url, name,
                                     self.policy.check_interval_seconds)
        scrape = Scrape()
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/instance={name},shipyard.dev/track=canary")
        for pod in pods.items:
            text = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod.metadata.name}:{REST_PORT}", self.namespace, MONITORING_PATH.lstrip("/"))
            scrape = scrape + parse_scrape(text, name)
        previous, self._last = self._last, scrape
        return window(previous, scrape) if previous is not None else (None, None)

    # --- agreement ----------------------------------------------------------------------
    def _agreement(self, name: str) -> tuple[float | None, float | None]:
        agreement = self.policy.gates.agreement
        if agreement is None:
            return None, None
        stable, canary = [], []
        for line in Path(agreement.samples).read_text().splitlines():
            if not line.strip():
                continue
            stable.append(self._predict(name, name, line))
            canary.append(self._predict(f"{name}-canary", name, line))
        if not stable:
            return None, None
        return compare_predictions(stable, canary)

    def _predict(self, service: str, model: str, body: str) -> Any:
        answer = self.core.connect_post_namespaced_service_proxy_with_path(
            f"{service}:{REST_PORT}", self.namespace, f"v1/models/{model}:predict", body=body)
        return json.loads(answer)["predictions"] if isinstance(answer, str) else \
            answer["predictions"]


def compare_predictions(stable: list[Any], canary: list[Any]) -> tuple[float, float]:
    """(top-1 agreement, max abs difference) over every instance of every request. Pure."""
    agree, total, worst = 0, 0, 0.0
    for a, b in zip(stable, canary):
        a_arr = np.asarray(_numeric(a), dtype=np.float64)
        b_arr = np.asarray(_numeric(b), dtype=np.float64)
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


def prometheus_window(url: str, name: str, seconds: float) -> tuple[float | None, float | None]:
    """Error rate and p99 (ms) of the canary pods over the last `seconds`, from Prometheus."""
    import requests

    span = f"{max(int(seconds), 30)}s"
    pods = f'model_name="{name}",pod=~"{name}-canary-.*"'
    queries = {
        "error_rate": (f'sum(rate({REQUEST_COUNT}{{{pods},status!="OK"}}[{span}])) / '
                       f'sum(rate({REQUEST_COUNT}{{{pods}}}[{span}]))'),
        "p99": (f'histogram_quantile(0.99, sum by (le) '
                f'(rate({REQUEST_LATENCY}_bucket{{{pods}}}[{span}]))) / 1000'),
    }
    values: dict[str, float | None] = {}
    for key, query in queries.items():
        response = requests.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query},
                                timeout=10)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        value = float(result[0]["value"][1]) if result else None
        values[key] = value if value is None or np.isfinite(value) else None
    return values["error_rate"], values["p99"]
