"""A CloudEvents receiver for the notification tests: a real HTTP server on 127.0.0.1 that
checks each request's X-Shipyard-Signature with its own HMAC, and parses the events with the
CloudEvents SDK's HTTP binding (the neighbour's client, not shipyard's)."""

from __future__ import annotations

import hashlib
import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "receiver-and-shipyard-share-this"


class Receiver:
    """An HTTP endpoint on 127.0.0.1 answering every POST with `status`. It keeps each request
    as received (headers, body) and whether its X-Shipyard-Signature is the HMAC-SHA256 of
    the body under SECRET, computed here, not by shipyard."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes, bool]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body,
                                                hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers.get("X-Shipyard-Signature", ""),
                                             expected)
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body, signed))
                    receiver.arrived.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/shipyard"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def events(self) -> list:
        """The CloudEvents received, parsed by the SDK (its HTTP binding, structured mode)."""
        from cloudevents.core.bindings.http import HTTPMessage, from_http_event

        parsed = []
        for headers, body, _ in self.requests:
            assert headers["Content-Type"] == "application/cloudevents+json"
            parsed.append(from_http_event(HTTPMessage(
                {k.lower(): v for k, v in headers.items()}, body)))
        return parsed

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
