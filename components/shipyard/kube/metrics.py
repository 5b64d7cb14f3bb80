"""TF Serving's Prometheus metrics -> error rate and p99 latency over a window. Pure.

TF Serving exports (with --monitoring_config_file enabling Prometheus):
  :tensorflow:serving:request_count{model_name, status}             counter of requests
  :tensorflow:serving:request_latency_bucket{model_name, API, entrypoint, le}  histogram, µs
A window is the difference between two scrapes (summed over the canary's pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"


@dataclass
class Scrape:
    requests: dict[str, float] = field(default_factory=dict)  # status -> count
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le (µs) -> cumulative

    def __add__(self, other: Scrape) -> Scrape:
        total = Scrape(dict(self.requests), dict(self.latency_buckets))
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
    return scrape


def window(before: Scrape, after: Scrape) -> tuple[float | None, float | None]:
    """(error rate, p99 latency in ms) between two scrapes; None where nothing happened."""
    requests = {s: after.requests.get(s, 0.0) - before.requests.get(s, 0.0)
                for s in after.requests}
    total = sum(requests.values())
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
    return error_rate, p99


def per_pod_window(before: dict[str, Scrape], after: dict[str, Scrape]
                   ) -> tuple[float | None, float | None]:
    """A window over several pods, scraped one by one. A pod whose counters went down
    restarted: its new counts are all new (as Prometheus's rate() treats a reset); a pod
    seen for the first time is counted from zero."""
    total_before, total_after = Scrape(), Scrape()
    for pod, now in after.items():
        then = before.get(pod, Scrape())
        reset = any(now.requests.get(k, 0.0) < v for k, v in then.requests.items())
        total_before = total_before + (Scrape() if reset else then)
        total_after = total_after + now
    return window(total_before, total_after)
