"""Every call of the Kubernetes API goes through `call`: a timeout on each request, bounded
retries with backoff for what the API server or the network may answer and then get over
(429, 5xx, a dropped or hung connection), and one error type for the rest (ClusterError, a
ShipyardError) whose message names the call, the answer and the fix.

Why one door: the rollout controller rolls back on a ShipyardError. An ApiException, the
dynamic client's ResourceNotFoundError or a urllib3 error that escaped it would end the
controller with a traceback and leave the canary with its weight and nothing watching it.

The retry decision (`retry_delay`) is pure; the kubernetes client is imported lazily.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, Callable, TypeVar

from shipyard.core.errors import ClusterError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds to connect and to read each answer: a hung connection is a failed call, never a
# controller (or a Lease renewal) that stops without knowing it.
REQUEST_TIMEOUT = (5.0, 30.0)
ATTEMPTS = 5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 16.0
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})

# What each refusal most often means for shipyard's calls, and the fix.
HINTS = {
    401: "the credentials were refused: check KUBECONFIG or the pod's service account token",
    403: ("the service account lacks a permission: apply the Role of k8s/ (shipyard's "
          "PUSHER_RULES) to the account that runs shipyard"),
    404: "it does not exist (was it deleted by hand, or is --namespace wrong?)",
    409: "another writer changed it first",
    422: "the API server refused the object as invalid",
}


def retry_delay(status: int | None, attempt: int, retry_after: str | None) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after a failed one, or None to give up.
    `status`: the HTTP status, or None for a connection that failed, dropped or hung.
    Honours Retry-After (seconds or an HTTP date), within MAX_BACKOFF_S."""
    if attempt >= ATTEMPTS or (status is not None and status not in RETRIED_STATUSES):
        return None
    backoff = min(FIRST_BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
    asked = _seconds(retry_after)
    return min(max(backoff, asked), MAX_BACKOFF_S) if asked is not None else backoff


def _seconds(retry_after: str | None) -> float | None:
    if not retry_after:
        return None
    try:
        return max(float(retry_after), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None  # neither seconds nor an HTTP date: the backoff alone
    return max(when.timestamp() - time.time(), 0.0)


def call(what: str, fn: Callable[..., T], *args: Any,
         sleep: Callable[[float], None] = time.sleep,
         before_each: Callable[[], None] | None = None, attempts: int = ATTEMPTS,
         **kwargs: Any) -> T:
    """`fn(*args, **kwargs, _request_timeout=REQUEST_TIMEOUT)`, retried as `retry_delay`
    says (at most `attempts` times); a failure that stays is a ClusterError naming `what`.
    An ApiException that is not retried (404, 409, 422...) is re-raised as it is, for the
    caller to decide on (`status_of` reads it). `before_each` runs before every attempt (the
    Lease's check: a retry must not act for a controller that has lost it)."""
    attempt = 0
    while True:
        attempt += 1
        if before_each is not None:
            before_each()
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except Exception as err:
            status, retry_after = _failure(err)
            if status == "other":
                raise
            delay = retry_delay(status, attempt, retry_after) if attempt < attempts else None
            if delay is None:
                if status is not None and status not in RETRIED_STATUSES:
                    raise  # an answer for the caller (404, 409, 422...)
                raise refused(what, err, attempts=attempt) from err
            log.warning("Kubernetes API: %s: %s; retrying in %.0f s (attempt %d of %d)",
                        what, describe(err), delay, attempt + 1, attempts)
            sleep(delay)


def status_of(err: BaseException) -> int | None:
    """The HTTP status of an ApiException (or the dynamic client's errors), else None."""
    status = getattr(err, "status", None)
    return int(status) if isinstance(status, int) else None


def refused(what: str, err: BaseException, *, attempts: int = 1) -> ClusterError:
    """A ClusterError naming the call, the API server's answer and the likely fix."""
    status = status_of(err)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    hint = HINTS.get(status or 0)
    if status is None:
        hint = ("the API server could not be reached or did not answer in time: check the "
                "cluster's address in KUBECONFIG and the network; running the same command "
                "again resumes")
    if is_missing_kind(err):
        hint = ("the kind is not served by this cluster: install the Gateway API CRDs "
                "(v1.3.0 or newer, standard channel) for HTTPRoute")
    elif status in RETRIED_STATUSES:
        hint = "the API server is overloaded or failing; running the same command again resumes"
    return ClusterError(f"Kubernetes API: {what} failed{tried}: {describe(err)}"
                        + (f"; {hint}" if hint else ""), missing_kind=is_missing_kind(err))


def describe(err: BaseException) -> str:
    """The answer in one line: status, reason and the API server's message."""
    status = status_of(err)
    if status is not None:
        reason = getattr(err, "reason", "") or ""
        message = _api_message(getattr(err, "body", None))
        return f"HTTP {status} {reason}".rstrip() + (f": {message}" if message else "")
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def _api_message(body: Any) -> str:
    import json

    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        return str(json.loads(body).get("message", ""))[:500]
    except (TypeError, ValueError, AttributeError):
        return str(body or "")[:200]


def _failure(err: BaseException) -> tuple[Any, str | None]:
    """(status, Retry-After) of a failed call: an HTTP status, None for the connection, or
    "other" for an error that is not the API's or the network's (a bug: not retried)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(err, ApiException):
        headers = err.headers or {}
        return (err.status if err.status else None), headers.get("Retry-After")
    if is_missing_kind(err):
        return 404, None
    if isinstance(err, (HTTPError, ConnectionError, TimeoutError)):
        return None, None
    return "other", None


def is_missing_kind(err: BaseException) -> bool:
    """The dynamic client's answer for a kind the cluster does not serve (a missing CRD)."""
    return type(err).__name__ == "ResourceNotFoundError"


def is_api_error(err: BaseException) -> bool:
    """An answer of the API server or a failure of the network, as opposed to a bug of ours
    (a TypeError) or a ShipyardError already made."""
    return not isinstance(err, ClusterError) and _failure(err)[0] != "other"


def translated(what: str, fn: Callable[[], T]) -> T:
    """`fn()`, with any error of the API or the network that it lets through (a 404 or 409
    it did not expect, the dynamic client's errors) turned into a ClusterError naming
    `what`: the controller's rollback catches ShipyardErrors only."""
    try:
        return fn()
    except ClusterError:
        raise
    except Exception as err:
        if _failure(err)[0] == "other":
            raise
        raise refused(what, err) from err
