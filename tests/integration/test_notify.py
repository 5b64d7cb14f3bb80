"""Notifications (--notify, SHIPYARD_NOTIFY): real commands against a real MLflow server, sending
to real HTTP receivers on 127.0.0.1 that check the signature with their own HMAC and parse the
body with the CloudEvents SDK's own parsers; one receiver down (a closed port), one answering
500. And MLflow's own registry webhooks firing on the alias moves shipyard makes.

The MLflow server here is the module's own: it allows webhooks to http://127.0.0.1
(MLFLOW_WEBHOOK_ALLOWED_SCHEMES, MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS) and reads its webhook list
afresh for each event (MLFLOW_WEBHOOK_CACHE_TTL=0). Each test runs in its own working
directory, where the undelivered file goes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support.event_receiver import SECRET, Receiver
from support.mlflow_server import MlflowServer, free_port
from support.specs import SEQUENTIAL_SPEC
from support.versions import add_version

NAME = "nfy"
HOST = socket.gethostname()


@pytest.fixture
def receiver():
    endpoint = Receiver()
    yield endpoint
    endpoint.close()


@pytest.fixture
def failing():
    endpoint = Receiver(status=500)
    yield endpoint
    endpoint.close()


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Each test in its own working directory (the undelivered file's), with no ambient
    notification settings."""
    monkeypatch.chdir(tmp_path)
    for key in ("SHIPYARD_NOTIFY", "SHIPYARD_NOTIFY_SECRET"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
        env.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
        env.setenv("MLFLOW_WEBHOOK_CACHE_TTL", "0")
        mlflow_server = MlflowServer(tmp_path_factory.mktemp("mlflow-webhooks"))
    yield mlflow_server
    mlflow_server.stop()


def invoke(*args: str, launcher=None):
    from shipyard.cli import main

    return CliRunner().invoke(main, list(args), obj={"launch_verifier": launcher})


@pytest.fixture(scope="module")
def registered(server, models, launcher, tmp_path_factory):
    """`shipyard register ... --notify` of NAME version 1 on the module's server: (the result,
    the receiver's requests, the repository)."""
    root = tmp_path_factory.mktemp("registered")
    (root / "spec.yaml").write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    endpoint = Receiver()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SHIPYARD_NOTIFY_SECRET", SECRET)
            env.chdir(root)
            result = invoke("register", str(models.path("sequential")), "--spec",
                            str(root / "spec.yaml"), "--repo", str(root / "repo"), "--name",
                            NAME, "--tracking-uri", server.uri, "--json", "--notify",
                            endpoint.url, launcher=launcher)
        events = endpoint.events()
    finally:
        endpoint.close()
    return result, events, endpoint.requests, root / "repo"


def history(server) -> list[dict]:
    result = invoke("alias", "history", NAME, "--tracking-uri", server.uri, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_register_announces_the_published_version_then_the_candidate_move(registered):
    result, events, requests, _ = registered
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [e.get_attributes()["type"] for e in events] == [
        "io.shipyard.version.published", "io.shipyard.alias.moved"]
    assert all(signed for _, _, signed in requests)
    for event in events:
        attributes = event.get_attributes()
        assert attributes["specversion"] == "1.0" and attributes["subject"] == NAME
        assert attributes["source"] == f"shipyard://{HOST}/register"
    assert events[0].get_data() == doc  # the command's own result document
    move = events[1].get_data()
    assert (move["alias"], move["from"], move["to"]) == ("candidate", None, 1)
    assert move["reason"] == f"registered by shipyard register ({doc['fingerprint']})"
    assert set(move) == {"alias", "from", "to", "time", "user", "reason", "pipeline_run_id",
                         "gates"}
    assert events[0].get_attributes()["id"] != events[1].get_attributes()["id"]


def test_alias_set_sends_its_audit_record_signed_to_the_env_s_and_the_flag_s_targets(
        registered, server, receiver, monkeypatch):
    from cloudevents.v1.http import from_http  # the SDK's 1.x API, as older receivers use

    other = Receiver()
    try:
        monkeypatch.setenv("SHIPYARD_NOTIFY", f"{receiver.url},")
        monkeypatch.setenv("SHIPYARD_NOTIFY_SECRET", SECRET)
        with_login = other.url.replace("http://", "http://bot:s%40fe@")
        result = invoke("alias", "set", NAME, "canary", "1", "--reason", "try it on 5%",
                        "--tracking-uri", server.uri, "--notify", with_login, "--json")
        assert result.exit_code == 0, result.stderr
        record = json.loads(result.stdout)
        for endpoint in (receiver, other):
            [(headers, body, signed)] = endpoint.requests
            assert signed, headers
            [event] = endpoint.events()
            assert event.get_attributes()["type"] == "io.shipyard.alias.moved"
            assert event.get_attributes()["source"] == f"shipyard://{HOST}/alias-set"
            assert event.get_data() == record
            legacy = from_http(headers, body)
            assert (legacy["type"], legacy["subject"], legacy.data["reason"]) == (
                "io.shipyard.alias.moved", NAME, "try it on 5%")
    finally:
        other.close()
    assert receiver.requests[0][0]["User-Agent"].startswith("shipyard/")
    assert "Authorization" not in receiver.requests[0][0]
    assert other.requests[0][0]["Authorization"] == "Basic " + base64.b64encode(
        b"bot:s@fe").decode()
    assert result.stderr == ""  # delivered: nothing to report
    assert not Path(".shipyard/undelivered-events.jsonl").exists()


def test_a_target_down_or_failing_is_retried_reported_and_kept_and_the_command_succeeds(
        registered, server, receiver, failing, workdir):
    down = f"http://127.0.0.1:{free_port()}/hooks"  # bound once, closed: refused
    started = time.monotonic()
    result = invoke("alias", "set", NAME, "canary", "1", "--reason", "again",
                    "--tracking-uri", server.uri, "--notify", down, "--notify", failing.url,
                    "--notify", receiver.url)
    took = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    assert took < 12, took
    assert history(server)[-1]["reason"] == "again"  # the move stands
    assert [e.get_attributes()["type"] for e in receiver.events()] == [
        "io.shipyard.alias.moved"]
    assert len(failing.requests) == 4  # the first attempt and three retries
    assert len({body for _, body, _ in failing.requests}) == 1  # the same event each time
    assert not failing.requests[0][2]  # no secret, no signature

    kept = workdir / ".shipyard" / "undelivered-events.jsonl"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        f"notify: io.shipyard.alias.moved not delivered to {down}: connection refused after "
        "4 attempts in ")
    assert lines[1].startswith(
        f"notify: io.shipyard.alias.moved not delivered to {failing.url}: HTTP 500 Internal "
        "Server Error after 4 attempts in ")
    assert all(line.endswith("; kept in .shipyard/undelivered-events.jsonl")
               for line in lines)
    records = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(r["url"], r["attempts"]) for r in records] == [(down, 4), (failing.url, 4)]
    assert records[1]["reason"].startswith("HTTP 500 Internal Server Error after 4 attempts")
    event = records[0]["event"]
    assert (event["type"], event["subject"], event["data"]["reason"]) == (
        "io.shipyard.alias.moved", NAME, "again")
    assert event == json.loads(receiver.requests[0][1])  # the event as it was sent


def test_an_undelivered_event_that_cannot_be_kept_is_reported_and_the_command_succeeds(
        registered, server, workdir):
    gone = Receiver(status=404)  # final: not retried
    (workdir / ".shipyard").write_text("a file where the folder would be")
    try:
        result = invoke("alias", "set", NAME, "canary", "1", "--reason", "unkept",
                        "--tracking-uri", server.uri, "--notify", gone.url)
    finally:
        gone.close()
    assert result.exit_code == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"notify: io.shipyard.alias.moved not delivered to {gone.url}: "
                           "HTTP 404 Not Found after 1 attempt in ")
    assert "; could not keep it in .shipyard/undelivered-events.jsonl ([Errno 17] File " \
           "exists: '.shipyard')" in line
    assert len(gone.requests) == 1


def test_a_failed_command_or_a_bad_target_sends_nothing(registered, server, receiver,
                                                         monkeypatch):
    before = history(server)
    champion = invoke("alias", "set", NAME, "champion", "1", "--reason", "by hand",
                      "--tracking-uri", server.uri, "--notify", receiver.url)
    assert champion.exit_code == 2
    assert "error: alias 'champion' moves only through a rollout" in champion.stderr

    bad = invoke("alias", "set", NAME, "canary", "1", "--reason", "r", "--tracking-uri",
                 server.uri, "--notify", "ftp://hooks.example/x")
    assert bad.exit_code == 2
    assert ("error: --notify: expected an http:// or https:// URL with a host, got "
            "'ftp://hooks.example/x'; e.g. https://hooks.example.com/shipyard") in bad.stderr

    monkeypatch.setenv("SHIPYARD_NOTIFY", "hooks.example.com/shipyard")
    env = invoke("alias", "set", NAME, "canary", "1", "--reason", "r", "--tracking-uri",
                 server.uri)
    assert env.exit_code == 2
    assert ("error: SHIPYARD_NOTIFY (environment): expected an http:// or https:// URL with "
            "a host, got 'hooks.example.com/shipyard'") in env.stderr
    assert history(server) == before  # nothing moved
    assert receiver.requests == []


def test_push_announces_a_label_change_and_nothing_else(published, receiver, repo):
    add_version(repo, "m", 1, published / "m" / "1")
    push = ["push", "--repo", str(repo), "--name", "m", "--version", "1", "--label", "stable",
            "--notify", receiver.url, "--json"]
    loads = invoke(*push)  # no server to wait on: this push only asks for version 1 to load
    assert loads.exit_code == 0, loads.stderr
    assert json.loads(loads.stdout)["after"] == {"versions": [1], "labels": {}}
    assert receiver.requests == []

    labels = invoke(*push)
    assert labels.exit_code == 0, labels.stderr
    [event] = receiver.events()
    attributes = event.get_attributes()
    assert (attributes["type"], attributes["subject"], attributes["source"]) == (
        "io.shipyard.serving.labels_changed", "m", f"shipyard://{HOST}/push")
    assert event.get_data() == json.loads(labels.stdout)
    assert event.get_data()["after"] == {"versions": [1], "labels": {"stable": 1}}

    again = invoke(*push)  # nothing left to change
    assert again.exit_code == 0, again.stderr
    assert len(receiver.requests) == 1


def test_copy_announces_the_destination_s_version_and_alias(registered, server, receiver,
                                                            launcher, tmp_path):
    _, _, _, source_repo = registered
    destination = f"sqlite:///{tmp_path / 'prod.db'}"
    from shipyard.cli import main

    result = CliRunner().invoke(main, [
        "copy", NAME, "--version", "1", "--from-repo", str(source_repo), "--from-tracking-uri",
        server.uri, "--to-repo", str(tmp_path / "prod"), "--to-tracking-uri", destination,
        "--to-name", "nfy-prod", "--notify", receiver.url, "--json"],
        obj={"start_check": launcher.start})
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    events = receiver.events()
    assert [(e.get_attributes()["type"], e.get_attributes()["subject"]) for e in events] == [
        ("io.shipyard.version.published", "nfy-prod"), ("io.shipyard.alias.moved", "nfy-prod")]
    assert events[0].get_data() == doc
    assert events[0].get_data()["copied_from"]["version"] == 1
    assert (events[1].get_data()["alias"], events[1].get_data()["to"]) == ("candidate", 1)


def test_mlflow_s_own_webhook_fires_on_the_alias_moves_shipyard_makes(registered, server,
                                                                      receiver):
    """MLflow 3.3+ with a SQL backend: a registry webhook on model_version_alias.created,
    signed MLflow's way (Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    webhook = client.create_webhook("shipyard-alias-moves", receiver.url,
                                    events=["model_version_alias.created"], secret=SECRET)
    try:
        result = invoke("alias", "set", NAME, "challenger", "1", "--reason", "hooked",
                        "--tracking-uri", server.uri)
        assert result.exit_code == 0, result.stderr
        [(headers, body, _)] = receiver.wait_for(1)  # MLflow delivers from a thread pool
    finally:
        client.delete_webhook(webhook.webhook_id)
    signed = f"{headers['X-MLflow-Delivery-Id']}.{headers['X-MLflow-Timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest())
    assert headers["X-MLflow-Signature"] == "v1," + expected.decode()
    payload = json.loads(body)
    assert (payload["entity"], payload["action"]) == ("model_version_alias", "created")
    assert payload["data"] == {"name": NAME, "alias": "challenger", "version": "1"}
