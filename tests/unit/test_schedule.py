"""`shipyard schedule create` through the real KFP client, against a local HTTP stub of the
KFP API that records the requests it receives (a test double; no KFP server runs here)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from shipyard.cli import main
from shipyard.core.errors import UsageError
from shipyard.kfp.schedule import kfp_cron


class KfpApiStub:
    """Answers the calls kfp.Client makes to create a recurring run, and keeps them."""

    def __init__(self, refuse: bool = False) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.refuse = refuse  # answer the recurring run with 400, as for a bad request
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                stub.requests.append(("GET", self.path, {}))
                if self.path.startswith("/apis/v2beta1/healthz"):
                    self._answer({"multi_user": False})
                elif self.path.startswith("/apis/v2beta1/experiments"):
                    self._answer({"experiments": [], "total_size": 0})
                else:
                    self._answer({})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append(("POST", self.path, body))
                if self.path.startswith("/apis/v2beta1/experiments"):
                    self._answer({"experiment_id": "exp-7", "display_name": body["display_name"]})
                elif stub.refuse:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._answer({**body, "recurring_run_id": "rr-42"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kfp_api(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads and writes ~/.config/kfp
    stub = KfpApiStub()
    yield stub
    stub.stop()


def test_schedule_create_makes_a_recurring_run_one_at_a_time_without_catch_up(kfp_api):
    result = CliRunner().invoke(main, [
        "schedule", "create", "--host", kfp_api.host, "--cron", "30 2 * * *",
        "--repository", "gs://acme-models", "--tracking-uri", "http://mlflow:5000",
        "--accelerator", "gpu", "--image", "registry.example/shipyard:1", "--json"])
    assert result.exit_code == 0, result.stderr or result.output
    doc = json.loads(result.stdout)
    assert doc["recurring_run_id"] == "rr-42" and doc["cron"] == "0 30 2 * * *"
    (method, path, body), = [r for r in kfp_api.requests if "recurringruns" in r[1]]
    assert method == "POST" and path == "/apis/v2beta1/recurringruns"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert body["experiment_id"] == "exp-7" and body["display_name"] == "shipyard-reference"
    assert body["runtime_config"]["parameters"] == {
        "repository": "gs://acme-models", "model_name": "demo-model",
        "tracking_uri": "http://mlflow:5000", "serving_label": "stable"}
    ship = body["pipeline_spec"]["deploymentSpec"]["executors"]["exec-ship"]["container"]
    assert ship["image"] == "registry.example/shipyard:1"
    assert ship["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_cron_expressions_are_checked_before_anything_is_sent():
    assert kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert kfp_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(UsageError, match=r"^cron: expected 5 fields \(minute hour day month "
                                         r"weekday\) or 6 \(with seconds first\), got 2"):
        kfp_cron("every night")


def test_a_refused_request_names_the_host(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    stub = KfpApiStub(refuse=True)
    try:
        result = CliRunner().invoke(main, ["schedule", "create", "--host", stub.host, "--cron",
                                           "0 3 * * *", "--repository", "gs://acme-models"])
    finally:
        stub.stop()
    assert result.exit_code == 1
    assert f"--host {stub.host}: Kubeflow Pipelines refused the recurring run" in result.stderr
