"""How many requests the canary served in a check's window (Observation.requests, which the
gates' min_requests judges): from TF Serving's metrics scraped pod by pod (kube.metrics), and
from a Prometheus server (kube.observe.prometheus_window), here a real HTTP server on
127.0.0.1 that answers the instant-query API as Prometheus does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from shipyard.kube.metrics import Scrape, parse_scrape, per_pod_window, window
from shipyard.kube.observe import ClusterObserver, prometheus_queries, prometheus_window
from shipyard.rollout.policy import parse_policy


def metrics(ok, errors=0, probes=0, api_label=True):
    """One pod's metrics as TF Serving writes them: every request by status; the latency of
    the OK ones by API, where REST GETs of a model's status (readiness probes) have API ""."""
    lines = ["# TYPE :tensorflow:serving:request_count counter",
             f':tensorflow:serving:request_count{{model_name="m",status="OK"}} {ok + probes}',
             f':tensorflow:serving:request_count{{model_name="m",status="UNAVAILABLE"}} {errors}',
             ':tensorflow:serving:request_count{model_name="other",status="OK"} 5000',
             "# TYPE :tensorflow:serving:request_latency histogram"]
    series = [("predict", "GRPC", ok), ("", "REST", probes)] if api_label else [
        (None, None, ok + probes)]
    for api, entrypoint, count in series:
        labels = 'model_name="m"' + (f',API="{api}",entrypoint="{entrypoint}"'
                                     if api is not None else "")
        lines += [f":tensorflow:serving:request_latency_bucket{{{labels},le=\"10000\"}} {count}",
                  f":tensorflow:serving:request_latency_bucket{{{labels},le=\"+Inf\"}} {count}",
                  f":tensorflow:serving:request_latency_sum{{{labels}}} {count}",
                  f":tensorflow:serving:request_latency_count{{{labels}}} {count}"]
    return "\n".join(lines) + "\n"


def scrape(*args, **kwargs):
    return parse_scrape(metrics(*args, **kwargs), "m")


# --- scrapes ---------------------------------------------------------------------------------

def test_requests_are_the_windows_requests_failed_ones_included_probes_not():
    measured = window(scrape(100, errors=2, probes=50), scrape(400, errors=12, probes=56))
    assert measured.requests == 310  # 300 OK and 10 failed; the 6 probes' GETs are not
    assert measured.error_rate == pytest.approx(10 / 316)  # as before: every request
    assert measured == (measured.error_rate, measured.p99_latency_ms, 310)


def test_an_idle_canary_serves_no_requests_though_its_probes_answer():
    measured = window(scrape(100, probes=50), scrape(100, probes=56))
    assert measured.requests == 0
    assert measured.error_rate == 0.0  # what min_requests keeps from passing the gates


def test_without_api_labels_every_request_counts():
    """Series without API/entrypoint labels are not taken for probes."""
    assert window(scrape(10, api_label=False), scrape(70, 5, api_label=False)).requests == 65


def test_pods_are_summed_and_a_new_pod_counts_from_zero():
    before = {"a": scrape(100, probes=10)}
    after = {"a": scrape(150, errors=5, probes=12), "b": scrape(30, probes=4)}
    measured = per_pod_window(before, after)
    assert measured.requests == 50 + 5 + 30


def test_a_restarted_pod_counts_its_requests_since_the_restart():
    before = {"a": scrape(1000, probes=300), "b": scrape(100, probes=10)}
    after = {"a": scrape(20, errors=3, probes=2), "b": scrape(110, probes=11)}
    assert per_pod_window(before, after).requests == 23 + 10


def test_a_pod_whose_probe_counter_alone_went_down_restarted_too():
    """Its request counter grew past the old value, its probes' did not: a restart."""
    before = {"a": scrape(10, probes=300)}
    after = {"a": scrape(400, probes=5)}
    assert per_pod_window(before, after).requests == 400


def test_no_pod_scraped_is_an_unknown_number_of_requests():
    assert per_pod_window({"a": scrape(10)}, {}) == (None, None, None)
    assert Scrape().status_reads == 0.0


# --- Prometheus ------------------------------------------------------------------------------

class Prometheus:
    """GET /api/v1/query?query=Q on 127.0.0.1, answering {"status": "success", "data":
    {"resultType": "vector", "result": [...]}} from `answers` (a function of the query: a
    number, None for an empty vector, or an HTTP status to fail with)."""

    def __init__(self, answers):
        self.answers, self.queries = answers, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)["query"][0]
                outer.queries.append((parts.path, query))
                answer = outer.answers(query)
                if isinstance(answer, tuple):
                    self.send_response(answer[0])
                    body = json.dumps({"status": "error", "error": answer[1]}).encode()
                else:
                    self.send_response(200)
                    result = [] if answer is None else [
                        {"metric": {}, "value": [1700000000.0, str(answer)]}]
                    body = json.dumps({"status": "success", "data": {
                        "resultType": "vector", "result": result}}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answers(**by_key):
    """Answers by which of prometheus_queries' queries was asked."""
    queries = {query: key for key, query in prometheus_queries("m", 60).items()}
    return lambda query: by_key[queries[query]]


def test_prometheus_gives_the_requests_of_the_same_window():
    with Prometheus(answers(error_rate=0.02, p99=12.5, requests=1234.6)) as prometheus:
        measured = prometheus_window(prometheus.url, "m", 60)
    assert measured == (0.02, 12.5, 1234.6)
    assert [path for path, _ in prometheus.queries] == ["/api/v1/query"] * 3
    asked = dict(zip(("error_rate", "p99", "requests"), (q for _, q in prometheus.queries)))
    assert asked["requests"] == (
        'sum(increase(:tensorflow:serving:request_count{model_name="m",pod=~"m-canary-.*"}'
        "[60s])) - (sum(increase(:tensorflow:serving:request_latency_count{model_name=\"m\","
        'pod=~"m-canary-.*",API="",entrypoint="REST"}[60s])) or vector(0))')
    assert "[60s]" in asked["error_rate"] and "[60s]" in asked["p99"]  # one window


def test_prometheus_without_series_of_the_canary_knows_no_request_count():
    with Prometheus(answers(error_rate=None, p99=None, requests=None)) as prometheus:
        assert prometheus_window(prometheus.url, "m", 60) == (None, None, None)


def test_an_extrapolated_increase_below_zero_is_no_request():
    with Prometheus(answers(error_rate=None, p99="NaN", requests=-0.4)) as prometheus:
        assert prometheus_window(prometheus.url, "m", 60) == (None, None, 0.0)


def test_the_observer_reports_prometheus_request_counts_and_no_data_when_it_fails(caplog):
    policy = parse_policy({"steps": [{"mirror": 10}], "check_interval_seconds": 60,
                           "gates": {"max_error_rate": 0.01, "min_requests": 100}})
    with Prometheus(answers(error_rate=0.0, p99=3.0, requests=99)) as prometheus:
        observer = ClusterObserver(None, "shipyard", policy.model_copy(update={
            "metrics": policy.metrics.model_copy(update={"prometheus_url": prometheus.url})}))
        seen = observer.observe("m", None)
    assert (seen.error_rate, seen.p99_latency_ms, seen.requests) == (0.0, 3.0, 99)
    with Prometheus(lambda query: (503, "query processing would load too many samples")) as down:
        observer.policy = observer.policy.model_copy(update={
            "metrics": observer.policy.metrics.model_copy(update={"prometheus_url": down.url})})
        seen = observer.observe("m", None)
    assert (seen.error_rate, seen.p99_latency_ms, seen.requests) == (None, None, None)
    assert "503 Server Error" in caplog.text
