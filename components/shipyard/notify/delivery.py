"""Sending notifications: bounded, and never in the way of the command that emits them.

One `emit` sends its events to every target at once (a thread per target), each target's in
order, all within one budget of BUDGET_S seconds per target: an attempt waits at most what is
left of it, and the command waits for the targets no longer than the budget (plus a moment
to collect the results). A target gets up to ATTEMPTS attempts per event; a connection error,
a timeout, 408, 429 and 5xx are retried after a short pause (429's and 503's Retry-After when
it fits in the budget); anything else is final (a 4xx, or a 3xx: redirects are not followed,
so a signed body never goes where it was not sent). Once an event to a target fails, the
target's later events of the same emit are not sent (a receiver never sees an alias move
whose publication it missed); they are undelivered too.

An undelivered event is reported (one line naming the URL, the event type and the reason)
and appended, as one JSON line, to the undelivered file (UNDELIVERED_PATH under the working
directory unless the caller names another). Failing to write that file is reported on the
same line, never raised. Nothing here raises into the caller, except ValueError for an event
type that is not one of events.EVENT_TYPES (a defect in the caller, not a delivery problem).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from shipyard import __version__
from shipyard.notify import events

log = logging.getLogger(__name__)

BUDGET_S = 10.0  # per target and emit: every attempt and pause of its events
ATTEMPTS = 4  # per event and target
ATTEMPT_TIMEOUT_S = 5.0  # one request, at most (and never more than the budget left)
PAUSES_S = (0.5, 1.0, 2.0)  # before the 2nd, 3rd and 4th attempts
MAX_RETRY_AFTER_S = 5.0
COLLECT_S = 0.5  # past the budget: what the command waits more for the threads to report
UNDELIVERED_PATH = Path(".shipyard") / "undelivered-events.jsonl"
RETRIED_STATUSES = frozenset({408, 429})

Event = tuple[str, str, dict[str, Any]]  # (type, subject, data)
Post = Callable[[str, dict[str, str], bytes, float], "Answer"]


@dataclass(frozen=True)
class Answer:
    """One attempt's outcome: the HTTP status (None: no answer: refused, reset, timed out),
    a reason to show, and the Retry-After in seconds if the answer had one."""

    status: int | None
    reason: str
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return (self.status is None or self.status >= 500
                or self.status in RETRIED_STATUSES)


@dataclass(frozen=True)
class Undelivered:
    url: str
    event_type: str
    reason: str
    attempts: int


def pause_before_retry(answer: Answer, attempts: int, left_s: float) -> float | None:
    """How long to wait before attempt `attempts + 1`, or None when there is none: the answer
    is final, the attempts are spent, or the pause (Retry-After included) does not fit in the
    `left_s` seconds of the budget with time for the attempt itself."""
    if answer.delivered or not answer.retryable or attempts >= ATTEMPTS:
        return None
    pause = PAUSES_S[min(attempts, len(PAUSES_S)) - 1]
    if answer.retry_after is not None:
        if answer.retry_after > MAX_RETRY_AFTER_S:
            return None
        pause = max(pause, answer.retry_after)
    return pause if pause < left_s else None


def post(url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> Answer:
    """One POST with urllib (proxies from the environment, as any client; no redirects)."""
    target, credentials = events.without_credentials(url)
    request = urllib.request.Request(target, data=body, method="POST", headers={
        "User-Agent": f"shipyard/{__version__}", **headers, **credentials})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read(65536)
            return Answer(response.status, f"HTTP {response.status}")
    except urllib.error.HTTPError as err:
        status = err.code
        retry_after = _seconds(err.headers.get("Retry-After")) if err.headers else None
        err.close()
        why = f"HTTP {status} {err.reason}".rstrip()
        if 300 <= status < 400:
            why += " (redirects are not followed)"
        return Answer(status, why, retry_after)
    except urllib.error.URLError as err:
        return Answer(None, _no_answer(err.reason))
    except (OSError, ValueError) as err:  # timeouts while reading, resets, bad responses
        return Answer(None, _no_answer(err))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect())


def _no_answer(reason: Any) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return f"no answer ({reason})"


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not worth waiting for within a 10 s budget


class Notifier:
    """Sends shipyard's CloudEvents to a fixed set of targets. Without targets every call
    does nothing (and imports nothing)."""

    def __init__(self, urls: Iterable[str], *, source: str, secret: str | None = None,
                 undelivered_path: Path = UNDELIVERED_PATH,
                 report: Callable[[str], None] | None = None, budget_s: float = BUDGET_S,
                 post: Post = post):
        self.urls = list(urls)
        self.source = source
        self._secret = secret or None
        self.undelivered_path = Path(undelivered_path)
        self._report = report or log.warning
        self.budget_s = budget_s
        self._post = post

    @classmethod
    def from_options(cls, urls: Iterable[str] = (), *, command: str | None = None,
                     environ: Mapping[str, str] | None = None,
                     undelivered_path: Path = UNDELIVERED_PATH,
                     report: Callable[[str], None] | None = None) -> Notifier:
        """The notifier a command's options and environment ask for: the targets of
        $SHIPYARD_NOTIFY then `urls` (--notify), the secret of $SHIPYARD_NOTIFY_SECRET, the
        source shipyard://<host>/<command>. Raises UsageError for a target that is not an
        http(s) URL (before anything is sent)."""
        env = os.environ if environ is None else environ
        return cls(events.targets(tuple(urls), env.get(events.TARGETS_ENV)),
                   source=events.event_source(socket.gethostname(), command),
                   secret=env.get(events.SECRET_ENV), undelivered_path=undelivered_path,
                   report=report)

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def emit(self, event_type: str, subject: str, data: dict[str, Any]) -> list[Undelivered]:
        """Sends one event to every target; see emit_all."""
        return self.emit_all([(event_type, subject, data)])

    def emit_all(self, batch: Iterable[Event]) -> list[Undelivered]:
        """Sends the events, in order, to every target, within the budget; returns what was
        not delivered (already reported and kept in the undelivered file)."""
        batch = list(batch)
        for event_type, _, _ in batch:
            if event_type not in events.EVENT_TYPES:
                raise ValueError(f"event_type: expected one of "
                                 f"{', '.join(events.EVENT_TYPES)}, got {event_type!r}")
        if not self.urls or not batch:
            return []
        try:
            messages = [(event_type, *events.structured(
                events.build_event(event_type, subject, data, source=self.source),
                self._secret)) for event_type, subject, data in batch]
        except Exception as err:  # noqa: BLE001 - never into the command
            for event_type, _, _ in batch:
                for url in self.urls:
                    self._report(f"notify: could not send {event_type} to "
                                 f"{events.shown_url(url)}: the event could not be built "
                                 f"({err!r})")
            return [Undelivered(url, t, f"not built: {err!r}", 0)
                    for t, _, _ in batch for url in self.urls]
        try:
            return self._send(messages)
        except Exception as err:  # noqa: BLE001 - a defect here must not fail the command
            self._report(f"notify: sending failed ({err!r}); events not delivered: "
                         f"{', '.join(t for t, _, _ in messages)}")
            return [Undelivered(url, t, repr(err), 0) for t, _, _ in messages
                    for url in self.urls]

    def _send(self, messages: list[tuple[str, dict[str, str], bytes]]) -> list[Undelivered]:
        deadline = time.monotonic() + self.budget_s
        sendings = [_Sending(url, messages, deadline, self.budget_s, self._post)
                    for url in self.urls]
        threads = [threading.Thread(target=s.run, name=f"notify-{n}", daemon=True)
                   for n, s in enumerate(sendings)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(deadline + COLLECT_S - time.monotonic(), 0.0))
        failed: list[Undelivered] = []
        for sending in sendings:
            for index, reason, attempts in sending.collect():
                event_type, _, body = messages[index]
                failed.append(Undelivered(sending.url, event_type, reason, attempts))
                self._keep(sending.url, event_type, reason, attempts, body)
        return failed

    def _keep(self, url: str, event_type: str, reason: str, attempts: int,
              body: bytes) -> None:
        """Reports one undelivered event and appends it to the undelivered file."""
        record = events.undelivered_record(url, reason, attempts, body)
        line = (f"notify: {event_type} not delivered to {events.shown_url(url)}: {reason}")
        try:
            self.undelivered_path.parent.mkdir(parents=True, exist_ok=True)
            # One write of one line in append mode: lines of concurrent commands never mix.
            with open(self.undelivered_path, "a", encoding="utf-8") as file:
                file.write(json.dumps(record, sort_keys=True) + "\n")
            line += f"; kept in {self.undelivered_path}"
        except OSError as err:
            line += f"; could not keep it in {self.undelivered_path} ({err})"
        self._report(line)


class _Sending:
    """One target's share of an emit, run on its own thread. The thread records outcomes;
    once the command stops waiting (collect), later outcomes are ignored and whatever was
    not delivered by then counts as undelivered."""

    def __init__(self, url: str, messages: list[tuple[str, dict[str, str], bytes]],
                 deadline: float, budget_s: float, post: Post):
        self.url = url
        self._messages = messages
        self._deadline = deadline
        self._budget_s = budget_s
        self._post = post
        self._lock = threading.Lock()
        self._outcomes: dict[int, tuple[bool, str, int]] = {}
        self._current: tuple[int, int, str] = (0, 0, "")  # index, attempts, last reason
        self._collected = False

    def run(self) -> None:
        started = time.monotonic()
        for index, (_, headers, body) in enumerate(self._messages):
            delivered, reason, attempts = self._deliver(index, headers, body, started)
            with self._lock:
                if self._collected:
                    return
                self._outcomes[index] = (delivered, reason, attempts)
            if not delivered:
                with self._lock:
                    for later in range(index + 1, len(self._messages)):
                        self._outcomes[later] = (
                            False, f"not sent: the event before it to this target was not "
                                   f"delivered ({reason})", 0)
                return

    def _deliver(self, index: int, headers: dict[str, str], body: bytes,
                 started: float) -> tuple[bool, str, int]:
        attempts = 0
        while True:
            left = self._deadline - time.monotonic()
            if left <= 0:  # spent on the events before this one
                return False, f"not sent within {self._budget_s:g} s", 0
            attempts += 1
            with self._lock:
                self._current = (index, attempts, self._current[2] if attempts > 1 else "")
            answer = self._post(self.url, headers, body, min(ATTEMPT_TIMEOUT_S, left))
            if answer.delivered:
                return True, answer.reason, attempts
            with self._lock:
                self._current = (index, attempts, answer.reason)
            left = self._deadline - time.monotonic()
            pause = pause_before_retry(answer, attempts, left)
            if pause is None:
                spent = time.monotonic() - started
                why = (f"{answer.reason} after {attempts} attempt{'s' * (attempts > 1)} in "
                       f"{spent:.1f} s")
                if answer.retryable and attempts < ATTEMPTS:
                    why += f" (no time left for another within {self._budget_s:g} s)"
                return False, why, attempts
            time.sleep(pause)

    def collect(self) -> list[tuple[int, str, int]]:
        """(index, reason, attempts) of each message not delivered; stops the thread's
        recording."""
        with self._lock:
            self._collected = True
            failed = [(i, reason, attempts) for i, (ok, reason, attempts)
                      in sorted(self._outcomes.items()) if not ok]
            index, attempts, last = self._current
            for pending in range(len(self._messages)):
                if pending not in self._outcomes:
                    if pending == index and attempts:
                        why = (f"{last + '; ' if last else ''}no answer within "
                               f"{self._budget_s:g} s (attempt {attempts})")
                        failed.append((pending, why, attempts))
                    else:
                        failed.append((pending, f"not sent within {self._budget_s:g} s", 0))
        return sorted(failed)


def notify(urls: Iterable[str], event_type: str, subject: str, data: dict[str, Any], *,
           command: str | None = None, undelivered_path: Path = UNDELIVERED_PATH,
           report: Callable[[str], None] | None = None) -> list[Undelivered]:
    """One event to the targets of `urls` and $SHIPYARD_NOTIFY (Notifier.from_options, then
    emit), for code that emits now and then. Unlike from_options it does not raise for a
    bad target: that is reported and nothing is sent (a command should build its Notifier
    with from_options when it starts, so that a bad --notify fails before anything changes)."""
    from shipyard.core.errors import UsageError

    try:
        notifier = Notifier.from_options(urls, command=command,
                                         undelivered_path=undelivered_path, report=report)
    except UsageError as err:
        (report or log.warning)(f"notify: {event_type} not sent: {err}")
        return [Undelivered(url, event_type, str(err), 0) for url in urls]
    return notifier.emit(event_type, subject, data)
