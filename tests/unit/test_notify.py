"""Notifications' pure parts (shipyard.notify.events) and the delivery rules (retries, budget,
order, the undelivered file) with a fake at our own seam, the `post` callable. The real HTTP
round trips, the commands and MLflow's webhooks: integration/test_notify.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import time

import pytest

from shipyard.core.errors import UsageError
from shipyard.notify import ALIAS_MOVED, EVENT_TYPES, VERSION_PUBLISHED, Notifier
from shipyard.notify.delivery import ATTEMPTS, Answer, pause_before_retry
from shipyard.notify.events import (
    build_event,
    event_source,
    shown_url,
    signature,
    signature_matches,
    structured,
    targets,
    without_credentials,
)

WHEN = dt.datetime(2026, 12, 5, 10, 0, 0, tzinfo=dt.UTC)


def test_the_event_types_are_the_issue_s_list():
    assert EVENT_TYPES == (
        "io.shipyard.version.published", "io.shipyard.alias.moved",
        "io.shipyard.serving.labels_changed", "io.shipyard.rollout.started",
        "io.shipyard.rollout.step", "io.shipyard.rollout.paused",
        "io.shipyard.rollout.approval_requested", "io.shipyard.rollout.approved",
        "io.shipyard.rollout.promoted",
        "io.shipyard.rollout.rolled_back", "io.shipyard.rollout.aborted",
        "io.shipyard.gate.failed")


def test_a_structured_event_is_cloudevents_json_and_the_sdk_reads_it_back():
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event

    event = build_event(ALIAS_MOVED, "churn", {"alias": "canary", "from": None, "to": 3,
                                               "gates": {"error_rate": 0.001}},
                        source=event_source("ci-7", "alias-set"), event_id="e-1", time=WHEN)
    headers, body = structured(event)
    assert headers == {"Content-Type": "application/cloudevents+json"}
    assert json.loads(body) == {
        "specversion": "1.0", "type": "io.shipyard.alias.moved",
        "source": "shipyard://ci-7/alias-set", "subject": "churn", "id": "e-1",
        "time": "2026-12-05T10:00:00Z", "datacontenttype": "application/json",
        "data": {"alias": "canary", "from": None, "to": 3, "gates": {"error_rate": 0.001}}}
    parsed = from_http_event(HTTPMessage({"content-type": headers["Content-Type"]}, body))
    assert parsed.get_attributes()["type"] == ALIAS_MOVED
    assert parsed.get_data()["to"] == 3


def test_data_json_cannot_hold_is_written_as_text_not_refused():
    event = build_event(VERSION_PUBLISHED, "m", {"when": WHEN, "path": None}, source="x")
    assert json.loads(structured(event)[1])["data"] == {"when": str(WHEN), "path": None}


def test_an_unknown_event_type_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"event_type: expected one of io\.shipyard\.version"
                                         r"\.published, .*, got 'io\.shipyard\.nope'"):
        build_event("io.shipyard.nope", "m", {}, source="x")
    with pytest.raises(ValueError, match=r"got 'io\.shipyard\.nope'"):
        Notifier(["http://127.0.0.1:9/"], source="x").emit("io.shipyard.nope", "m", {})


def test_the_signature_is_hex_hmac_sha256_of_the_exact_body():
    body = b'{"a": 1}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature(body, "s3cret") == f"sha256={expected}"
    headers, signed = structured(build_event(ALIAS_MOVED, "m", {}, source="x"), "s3cret")
    assert signature_matches(signed, headers["X-Shipyard-Signature"], "s3cret")
    assert not signature_matches(signed + b" ", headers["X-Shipyard-Signature"], "s3cret")
    assert not signature_matches(signed, headers["X-Shipyard-Signature"], "other")
    assert not signature_matches(signed, None, "s3cret")
    assert "X-Shipyard-Signature" not in structured(build_event(ALIAS_MOVED, "m", {},
                                                                source="x"))[0]


def test_flags_add_to_the_environment_s_targets_each_once():
    assert targets(("https://b.example/h", "http://a.example/h"),
                   " http://a.example/h , ,https://c.example/x") == [
        "http://a.example/h", "https://c.example/x", "https://b.example/h"]
    assert targets((), None) == [] and targets((), "") == []


@pytest.mark.parametrize(("flags", "env", "message"), [
    (("ftp://a.example/x",), None,
     r"^notify: expected an http:// or https:// URL with a host, got 'ftp://a\.example/x'"),
    (("http:///path",), None, r"^notify: expected an http:// or https:// URL with a host"),
    (("http://a.example:port/",), None, r"^notify: 'http://a\.example:port/' is not a URL"),
    ((), "https://ok.example/, hooks.example.com",
     r"^SHIPYARD_NOTIFY \(environment\): expected an http:// or https:// URL with a host, "
     r"got 'hooks\.example\.com'"),
])
def test_a_target_that_is_not_an_http_url_is_a_usage_error(flags, env, message):
    with pytest.raises(UsageError, match=message) as raised:
        targets(flags, env)
    assert raised.value.param == ("notify" if flags else None)


def test_credentials_in_a_url_are_sent_as_basic_authentication():
    assert without_credentials("https://bot:t%40k@[::1]:8443/x?y=1") == (
        "https://[::1]:8443/x?y=1", {"Authorization": "Basic Ym90OnRAaw=="})  # bot:t@k
    assert without_credentials("http://hooks.example/x") == ("http://hooks.example/x", {})


def test_reports_hide_a_password_in_the_url():
    assert shown_url("https://bot:tok3n@hooks.example:8443/x?y=1") == \
        "https://bot:***@hooks.example:8443/x?y=1"
    assert shown_url("https://hooks.example/x") == "https://hooks.example/x"


@pytest.mark.parametrize(("answer", "attempts", "left", "pause"), [
    (Answer(500, "HTTP 500"), 1, 9.0, 0.5),
    (Answer(None, "connection refused"), 2, 9.0, 1.0),
    (Answer(429, "HTTP 429", retry_after=3.0), 1, 9.0, 3.0),
    (Answer(429, "HTTP 429", retry_after=60.0), 1, 9.0, None),  # longer than worth waiting
    (Answer(503, "HTTP 503"), 3, 1.5, None),  # the pause does not fit in the budget
    (Answer(502, "HTTP 502"), ATTEMPTS, 9.0, None),  # attempts spent
    (Answer(404, "HTTP 404"), 1, 9.0, None),  # final
    (Answer(301, "HTTP 301"), 1, 9.0, None),  # redirects are not followed
    (Answer(408, "HTTP 408"), 1, 9.0, 0.5),
    (Answer(204, "HTTP 204"), 1, 9.0, None),  # delivered
])
def test_which_answers_are_retried_and_after_how_long(answer, attempts, left, pause):
    assert pause_before_retry(answer, attempts, left) == pause


class FakePost:
    """Answers from a script per URL; records (url, event type, body) of every attempt."""

    def __init__(self, script):
        self.script = script
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, url, headers, body, timeout_s):
        with self.lock:
            self.calls.append((url, json.loads(body)["type"], timeout_s))
        answer = self.script[url]
        return answer(timeout_s) if callable(answer) else answer


def notifier(tmp_path, urls, post, lines, budget_s=10.0):
    return Notifier(urls, source="shipyard://test", undelivered_path=tmp_path / "u.jsonl",
                    report=lines.append, budget_s=budget_s, post=post)


def test_a_failed_event_stops_that_target_s_later_events_but_not_other_targets(tmp_path):
    post = FakePost({"http://ok/": Answer(200, "HTTP 200"),
                     "http://gone/": Answer(410, "HTTP 410 Gone")})
    lines = []
    failed = notifier(tmp_path, ["http://ok/", "http://gone/"], post, lines).emit_all(
        [(VERSION_PUBLISHED, "m", {"version": 1}), (ALIAS_MOVED, "m", {"to": 1})])
    assert [(c[0], c[1]) for c in post.calls if c[0] == "http://ok/"] == [
        ("http://ok/", VERSION_PUBLISHED), ("http://ok/", ALIAS_MOVED)]
    assert [c[1] for c in post.calls if c[0] == "http://gone/"] == [VERSION_PUBLISHED]
    assert [(f.url, f.event_type, f.attempts) for f in failed] == [
        ("http://gone/", VERSION_PUBLISHED, 1), ("http://gone/", ALIAS_MOVED, 0)]
    assert re.fullmatch(r"HTTP 410 Gone after 1 attempt in \d+\.\d s", failed[0].reason)
    assert failed[1].reason == ("not sent: the event before it to this target was not "
                                f"delivered ({failed[0].reason})")
    assert lines == [
        f"notify: io.shipyard.version.published not delivered to http://gone/: "
        f"{failed[0].reason}; kept in {tmp_path / 'u.jsonl'}",
        f"notify: io.shipyard.alias.moved not delivered to http://gone/: "
        f"{failed[1].reason}; kept in {tmp_path / 'u.jsonl'}"]
    kept = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert [(k["url"], k["event"]["type"], k["attempts"]) for k in kept] == [
        ("http://gone/", VERSION_PUBLISHED, 1), ("http://gone/", ALIAS_MOVED, 0)]
    assert kept[1]["event"]["data"] == {"to": 1} and kept[1]["event"]["subject"] == "m"


def test_retries_stop_when_the_budget_would_run_out(tmp_path):
    post = FakePost({"http://busy/": Answer(503, "HTTP 503 Service Unavailable")})
    lines = []
    started = time.monotonic()
    failed = notifier(tmp_path, ["http://busy/"], post, lines, budget_s=1.2).emit(
        ALIAS_MOVED, "m", {})
    assert time.monotonic() - started < 1.5
    assert len(post.calls) == 2  # 0.5 s pause fits in 1.2 s, the next 1 s pause does not
    assert failed[0].reason.startswith("HTTP 503 Service Unavailable after 2 attempts in ")
    assert failed[0].reason.endswith(" (no time left for another within 1.2 s)")


def test_a_target_that_does_not_answer_in_the_budget_does_not_hold_the_command(tmp_path):
    release = threading.Event()

    def hang(timeout_s):
        release.wait(5)
        return Answer(200, "HTTP 200")

    post = FakePost({"http://slow/": hang, "http://ok/": Answer(202, "HTTP 202")})
    lines = []
    started = time.monotonic()
    failed = notifier(tmp_path, ["http://slow/", "http://ok/"], post, lines,
                      budget_s=0.5).emit(ALIAS_MOVED, "m", {})
    assert time.monotonic() - started < 1.5
    release.set()
    assert [(f.url, f.reason, f.attempts) for f in failed] == [
        ("http://slow/", "no answer within 0.5 s (attempt 1)", 1)]


def test_an_unwritable_undelivered_file_is_reported_not_raised(tmp_path):
    (tmp_path / "file").write_text("")
    post = FakePost({"http://gone/": Answer(404, "HTTP 404 Not Found")})
    lines = []
    notifier_ = Notifier(["http://gone/"], source="x", report=lines.append, post=post,
                         undelivered_path=tmp_path / "file" / "u.jsonl")
    assert len(notifier_.emit(ALIAS_MOVED, "m", {})) == 1
    assert lines[0].startswith("notify: io.shipyard.alias.moved not delivered to "
                               "http://gone/: HTTP 404 Not Found after 1 attempt in ")
    assert f"; could not keep it in {tmp_path / 'file' / 'u.jsonl'} (" in lines[0]


def test_without_targets_nothing_is_sent(tmp_path):
    post = FakePost({})
    assert not Notifier([], source="x", post=post).enabled
    assert Notifier([], source="x", post=post).emit(ALIAS_MOVED, "m", {}) == []
    assert post.calls == []


def test_from_options_reads_the_environment():
    notifier_ = Notifier.from_options(("https://b.example/",), command="alias-set",
                                      environ={"SHIPYARD_NOTIFY": "https://a.example/",
                                               "SHIPYARD_NOTIFY_SECRET": "s"})
    assert notifier_.urls == ["https://a.example/", "https://b.example/"]
    assert notifier_.source.startswith("shipyard://") and notifier_.source.endswith(
        "/alias-set")
    with pytest.raises(UsageError, match=r"^notify: expected an http:// or https:// URL"):
        Notifier.from_options(("nope",), environ={})
