"""TF Serving's Prometheus metrics -> error rate, p99 latency and requests over a window. Pure.

TF Serving exports (with --monitoring_config_file enabling Prometheus):
  :tensorflow:serving:request_count{model_name, status}             counter of requests
  :tensorflow:serving:request_latency_bucket{model_name, API, entrypoint, le}  histogram, µs
A window is the difference between two scrapes (summed over the canary's pods).

What request_count counts (tensorflow_serving/servables/tensorflow/util.cc,
RecordModelRequestCount; called by model_servers/prediction_service_impl.cc and
http_server.cc): every gRPC Predict, Classify and Regress, and every request of the REST API
that names a model, by the status of its answer. A request the Gateway mirrors to the
canary is an ordinary request there (TF Serving cannot tell it apart), so the canary's
counters measure it under mirrored traffic as under weighted traffic. The REST API's GETs of
a model's status or metadata count too: among them the readiness probe (GET
/v1/models/NAME, every 5 s per pod), which would fill any `min_requests` of an idle canary.
Those GETs answered OK are the request_latency series with API "" and entrypoint "REST"
(http_server.cc records latency for OK answers, with the REST method as API, empty for a
GET), so `requests` leaves them out; failed ones cannot be told apart and stay in. The
agreement samples that kube.observe sends the canary are requests it served too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prometheus_client.parser import text_string_to_metric_families

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"


@dataclass
class Scrape:
    requests: dict[str, float] = field(default_factory=dict)  # status -> count
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le (µs) -> cumulative
    status_reads: float = 0.0  # REST GETs of model status or metadata answered OK (probes)

    def __add__(self, other: Scrape) -> Scrape:
        total = Scrape(dict(self.requests), dict(self.latency_buckets),
                       self.status_reads + other.status_reads)
        for status, count in other.requests.items():
            total.requests[status] = total.requests.get(status, 0.0) + count
        for le, count in other.latency_buckets.items():
            total.latency_buckets[le] = total.latency_buckets.get(le, 0.0) + count
        return total


def parse_scrape(text: str, model: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") != model:
                continue
            if sample.name in (REQUEST_COUNT, REQUEST_COUNT + "_total"):
                status = sample.labels.get("status", "")
                scrape.requests[status] = scrape.requests.get(status, 0.0) + sample.value
            elif sample.name == REQUEST_LATENCY + "_bucket":
                le = float(sample.labels["le"])
                scrape.latency_buckets[le] = scrape.latency_buckets.get(le, 0.0) + sample.value
            elif sample.name == REQUEST_LATENCY + "_count" and is_status_read(sample.labels):
                scrape.status_reads += sample.value
    return scrape


def is_status_read(labels: dict[str, Any]) -> bool:
    """A latency series of REST GETs (model status, metadata): API "" on entrypoint REST."""
    return labels.get("API") == "" and labels.get("entrypoint") == "REST"


class Window(NamedTuple):
    """What the canary did between two scrapes. error_rate and p99_latency_ms are None when
    nothing happened; requests (the inference requests it served, failed ones included, its
    OK status reads not) is None when no pod was scraped."""

    error_rate: float | None
    p99_latency_ms: float | None
    requests: float | None


def window(before: Scrape, after: Scrape) -> Window:
    """The window between two scrapes of the same pods (summed)."""
    requests = {s: after.requests.get(s, 0.0) - before.requests.get(s, 0.0)
                for s in after.requests}
    total = sum(requests.values())
    served = max(total - (after.status_reads - before.status_reads), 0.0)
    error_rate = (total - requests.get("OK", 0.0)) / total if total > 0 else None
    buckets = sorted((le, after.latency_buckets[le] - before.latency_buckets.get(le, 0.0))
                     for le in after.latency_buckets)
    observed = buckets[-1][1] if buckets else 0.0  # the +Inf bucket holds every request
    p99 = None
    if observed > 0:
        finite = [le for le, _ in buckets if le != float("inf")]
        for le, cumulative in buckets:
            if cumulative >= 0.99 * observed:
                # Beyond the last bound: report that bound (a lower limit; JSON has no inf).
                p99 = (le if le != float("inf") else (finite[-1] if finite else 0.0)) / 1000.0
                break
    return Window(error_rate, p99, served)


def per_pod_window(before: dict[str, Scrape], after: dict[str, Scrape]) -> Window:
    """A window over several pods, scraped one by one. A pod whose counters went down
    restarted: its new counts are all new (as Prometheus's rate() treats a reset); a pod
    seen for the first time is counted from zero. No pod scraped: requests unknown."""
    total_before, total_after = Scrape(), Scrape()
    for pod, now in after.items():
        then = before.get(pod, Scrape())
        reset = (any(now.requests.get(k, 0.0) < v for k, v in then.requests.items())
                 or now.status_reads < then.status_reads)
        total_before = total_before + (Scrape() if reset else then)
        total_after = total_after + now
    measured = window(total_before, total_after)
    return measured if after else measured._replace(requests=None)
