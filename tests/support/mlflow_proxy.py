"""An HTTP proxy on 127.0.0.1 in front of the test MLflow server that injects one fault at the
k-th request it sees: a real socket between shipyard's MlflowClient and a real server, so the
faults are the ones a network or a kill produces, with nothing mocked.

Faults (at request number `at`, counting from 1 since the last `arm`):
- "kill":  SIGKILL the process `victim` (a `shipyard register` subprocess) before the
           request reaches the server, then close the connection. Killing before request k
           leaves the server exactly as a kill anywhere between answers k-1 and k would.
- "drop":  forward the request, let the server apply it, then close the connection without
           answering: the answer is lost. MLflow's client retries, as it would after a
           network fault, so a non-idempotent request (create_run, create_model_version)
           reaches the server twice.
- "cut":   close the connection without forwarding, for request k and every later one: the
           registry is gone from request k on, as for a process killed at k, but in-process
           (with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 the command fails at once).

`arm(..., observe=f)` calls f("METHOD path") as each request arrives, under the proxy's lock
and before the request is forwarded or faulted: a snapshot taken there is what the client had
done when it sent the request (requests_of_one_register in conftest.py records the repository
directory's files that way).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "trailer", "upgrade"}


class ObservedRequests(list):
    """The "METHOD path" of each request, as a list, with what the observer recorded as it
    arrived: `states[k - 1]` for request k."""

    def __init__(self, requests: Iterable[str], states: Iterable[object]):
        super().__init__(requests)
        self.states = list(states)
        assert len(self.states) == len(self), (len(self.states), len(self))


class FaultProxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.requests: list[str] = []  # "METHOD path" of every request since arm()
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._at = 0
        self._matching: str | None = None
        self._victim: int | None = None
        self._victim_known = threading.Event()
        self._observe: Callable[[str], None] | None = None
        self.fired = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's pooled session expects

            def log_message(self, *args: object) -> None:  # the test output stays readable
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    raise RuntimeError("the fault proxy needs Content-Length bodies")
                body = self.rfile.read(length) if length else b""
                fault = proxy._count(f"{self.command} {self.path}")
                if fault in ("kill", "cut"):
                    if fault == "kill":
                        proxy._kill_victim()
                    self._hang_up()
                    return
                status, reason, headers, payload = proxy._forward(
                    self.command, self.path, self.headers, body)
                if fault == "drop":
                    self._hang_up()
                    return
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _hang_up(self) -> None:
                # No status line at all: the client sees the connection close mid-request.
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def arm(self, fault: str | None = None, at: int = 0,
            observe: Callable[[str], None] | None = None, matching: str | None = None) -> None:
        """Counts from zero again; `fault` at request `at` (None: only count), or at the first
        request whose "METHOD path" contains `matching`; `observe` (until the next arm) is
        called with each request as it arrives, under the lock."""
        assert fault in (None, "kill", "drop", "cut")
        with self._lock:
            self.requests = []
            self._fault, self.fired = fault, False
            self._at = at if matching is None else 10**9  # set by the first match
            self._matching = matching
            self._observe = observe
            self._victim = None
            self._victim_known.clear()

    def set_victim(self, pid: int) -> None:
        self._victim = pid
        self._victim_known.set()

    def _count(self, label: str) -> str | None:
        with self._lock:
            if self._observe is not None:
                self._observe(label)
            self.requests.append(label)
            number = len(self.requests)
            if self._matching is not None and not self.fired and self._matching in label:
                self._at = number  # the first match is the request the fault hits
            if self._fault == "cut" and number >= self._at:
                self.fired = True
                return "cut"
            if self._fault is not None and number == self._at:
                self.fired = True
                return self._fault
        return None

    def _kill_victim(self) -> None:
        if not self._victim_known.wait(timeout=60):
            raise RuntimeError("kill fault armed without a victim process")
        try:
            os.kill(self._victim, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _forward(self, method: str, path: str, headers: object, body: bytes
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            forwarded = {k: v for k, v in headers.items()  # type: ignore[attr-defined]
                         if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
            forwarded["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
