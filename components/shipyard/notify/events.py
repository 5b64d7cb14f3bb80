"""What a notification is, apart from sending it (pure: no network, no files).

Each notification is a CloudEvents 1.0 event in structured JSON mode: the whole event (its
attributes and `data`) is the HTTP body, `Content-Type: application/cloudevents+json`. It is
built and serialized with the CloudEvents SDK (`cloudevents.core`), so a receiver can parse it
with any CloudEvents SDK. `subject` is the model name; `source` says which shipyard command on
which host sent it; `id` (a UUID) is unique per event, so a receiver can drop duplicates (a
retry after a lost answer delivers an event twice).

The signature: with a secret, each request carries `X-Shipyard-Signature: sha256=<hex>`, the
HMAC-SHA256 of the exact body bytes under the secret (the header form GitHub's webhooks use).
What was matched of MLflow's registry webhooks (mlflow/webhooks/delivery.py, MLflow 3.3+): the
same algorithm, HMAC-SHA256 with a shared secret, in one request header, over the body as
sent. What differs, on purpose: MLflow follows Standard Webhooks, signing
`<delivery id>.<unix time>.<body>` and sending `X-MLflow-Signature: v1,<base64>` beside
`X-MLflow-Timestamp` and `X-MLflow-Delivery-Id`, because its JSON body carries neither an id
nor a time. A structured CloudEvent carries both (`id`, `time`) inside the body, so signing
the body alone covers them: a receiver checks the signature, then rejects a stale `time` or a
seen `id` against replays.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from shipyard.core.errors import UsageError
from shipyard.core.event_types import EVENT_TYPES

# The event types are in core/event_types.py (shipyard.notify exports them).
CONTENT_TYPE: Final = "application/cloudevents+json"
SIGNATURE_HEADER: Final = "X-Shipyard-Signature"
SIGNATURE_PREFIX: Final = "sha256="
TARGETS_ENV: Final = "SHIPYARD_NOTIFY"
SECRET_ENV: Final = "SHIPYARD_NOTIFY_SECRET"
SCHEMES: Final = ("http", "https")


def event_source(host: str, command: str | None = None) -> str:
    """The events' `source`: `shipyard://HOST/COMMAND` (e.g. shipyard://ci-7/alias-set)."""
    return f"shipyard://{host}" + (f"/{command}" if command else "")


def build_event(event_type: str, subject: str, data: dict[str, Any], *, source: str,
                event_id: str | None = None, time: dt.datetime | None = None) -> Any:
    """The CloudEvent (the SDK's `cloudevents.core.v1.event.CloudEvent`). `data` is made plain
    JSON first (a value JSON cannot hold is written as its str), so building never fails on
    what a step returned."""
    from cloudevents.core.v1.event import CloudEvent

    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type: expected one of {', '.join(EVENT_TYPES)}, "
                         f"got {event_type!r}")
    attributes = {"type": event_type, "source": source, "subject": subject,
                  "id": event_id or str(uuid.uuid4()),
                  "time": time or dt.datetime.now(dt.UTC),
                  "datacontenttype": "application/json"}
    return CloudEvent(attributes=attributes, data=json.loads(json.dumps(data, default=str)))


def structured(event: Any, secret: str | None = None) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the HTTP request carrying `event` in structured mode, signed when
    a secret is given."""
    from cloudevents.core.bindings.http import to_structured_event

    message = to_structured_event(event)
    headers = {"Content-Type": CONTENT_TYPE}
    if secret:
        headers[SIGNATURE_HEADER] = signature(message.body, secret)
    return headers, message.body


def signature(body: bytes, secret: str) -> str:
    """`sha256=<hex HMAC-SHA256 of body under secret>`."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_matches(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver checks (in constant time): the header is the body's signature."""
    return header is not None and hmac.compare_digest(header, signature(body, secret))


def targets(flags: tuple[str, ...] | list[str], env_value: str | None) -> list[str]:
    """Where events go: the URLs of $SHIPYARD_NOTIFY (comma-separated) and then those of
    --notify, each once. The flags add to the environment's targets; an empty SHIPYARD_NOTIFY
    (or none) leaves the flags alone. Raises UsageError naming the flag or variable for a
    URL that is not http(s)://HOST..."""
    found: list[str] = []
    for url in (env_value or "").split(","):
        if url.strip():
            found.append(check_url(url.strip(), TARGETS_ENV))
    for url in flags:
        found.append(check_url(url.strip(), "notify"))
    return list(dict.fromkeys(found))


def check_url(url: str, param: str) -> str:
    where = f"{param}" if param == "notify" else f"{param} (environment)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        raise UsageError(f"{where}: {url!r} is not a URL ({err}); give an http:// or "
                         "https:// URL such as https://hooks.example.com/shipyard",
                         param="notify" if param == "notify" else None) from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise UsageError(f"{where}: expected an http:// or https:// URL with a host, got "
                         f"{url!r}; e.g. https://hooks.example.com/shipyard",
                         param="notify" if param == "notify" else None)
    return url


def without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """(the URL to connect to, headers): credentials in a URL (https://user:password@host/)
    become HTTP Basic authentication, as curl and requests send them; urllib would take them
    for part of the host name."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    token = base64.b64encode(user.encode("utf-8")).decode("ascii")
    return (urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)),
            {"Authorization": f"Basic {token}"})


def shown_url(url: str) -> str:
    """The URL as reports show it: a password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def undelivered_record(url: str, reason: str, attempts: int, body: bytes,
                       now: dt.datetime | None = None) -> dict[str, Any]:
    """One line of the undelivered file: when, where, why, and the event itself (its JSON,
    as sent; re-sending it signs it again)."""
    return {"failed_at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
            "url": shown_url(url), "reason": reason, "attempts": attempts,
            "event": json.loads(body)}
