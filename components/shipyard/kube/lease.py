"""One coordination.k8s.io/v1 Lease per model (`shipyard-rollout-<name>`), held by the one
controller that may act on that model's rollout, as client-go's leader election holds one.

What it takes from client-go (tools/leaderelection/leaderelection.go):
- **Expiry by observed change, not by the holder's clock.** A Lease is free when its record
  (holder, renewTime, resourceVersion) has not changed for leaseDurationSeconds of *our*
  monotonic clock (client-go's observedTime). Comparing our clock with a renewTime another
  host wrote would let a skewed clock steal a live Lease, or wait too little.
- **The holder stops before anyone may take over.** Renewals run every RETRY_PERIOD_S;
  once RENEW_DEADLINE_S (< LEASE_SECONDS) have passed without one, `HeldLease.check` fails,
  and the controller checks it before every action and every save. Each call has a timeout
  (kube.api), so a hung connection is noticed.
- **Writes are conditional** on the resourceVersion read (a PUT with it): of two takers,
  one gets 409.

And one thing of shipyard's: a holder whose process is known to be gone (same host and pid
namespace, pid dead or reused: `holder_is_dead`) is taken over at once, so the same `rollout
start` run again after a kill resumes instead of waiting for the Lease to expire.

Times are written as MicroTime strings with exactly six fractional digits: the kubernetes
client serializes a datetime with isoformat(), which drops the fraction when the
microseconds are 0, and the API server refuses such a MicroTime (400).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Any, Callable, Iterator

from shipyard.core.errors import LeaseHeldError
from shipyard.kube import api

log = logging.getLogger(__name__)
LEASE_SECONDS = 60
RENEW_DEADLINE_S = 40.0
RETRY_PERIOD_S = 10.0


def micro_time(when: dt.datetime) -> str:
    """RFC 3339 with six fractional digits, UTC: metav1.MicroTime's wire format."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Observed:
    """How long a Lease's record has stayed the same, on our monotonic clock. Pure."""

    def __init__(self) -> None:
        self._record: tuple[Any, ...] | None = None
        self._since = 0.0

    def unchanged_for(self, record: tuple[Any, ...], now: float) -> float:
        if record != self._record:
            self._record, self._since = record, now
        return now - self._since


class HeldLease:
    """The controller checks it before every action and save: once renewal has failed for
    RENEW_DEADLINE_S, or another holder was seen, it raises LeaseHeldError."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.lost = threading.Event()
        self.reason = ""
        self._clock = clock
        self.last_renewed = clock()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` was written: the Lease runs from then, not from the
        answer (a slow answer must not stretch it)."""
        self.last_renewed = max(self.last_renewed, sent_at)

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            log.error("%s", reason)

    def check(self) -> None:
        silent = self._clock() - self.last_renewed
        if not self.lost.is_set() and silent > RENEW_DEADLINE_S:
            self.lose(f"could not renew the Lease {self.name} for {silent:.0f} s (the deadline "
                      f"is {RENEW_DEADLINE_S:.0f} s of its {LEASE_SECONDS} s): another "
                      "controller may take it over, so this one stops acting")
        if self.lost.is_set():
            raise LeaseHeldError(self.reason)


class Leases:
    """Acquires, renews and releases the Leases of one namespace."""

    def __init__(self, leases: Any, namespace: str, *,
                 holder_is_dead: Callable[[str], bool] = lambda holder: False,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 retry_period_s: float = RETRY_PERIOD_S):
        self.leases = leases  # a CoordinationV1Api
        self.namespace = namespace
        self.holder_is_dead = holder_is_dead
        self.sleep, self.clock = sleep, clock
        self.retry_period_s = retry_period_s

    @contextlib.contextmanager
    def held(self, lease_name: str, holder: str, wait_s: float,
             what: str) -> Iterator[HeldLease]:
        self.acquire(lease_name, holder, wait_s, what)
        handle = HeldLease(lease_name, self.clock)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(handle, holder, stop),
                                   daemon=True, name=f"renew {lease_name}")
        renewer.start()
        try:
            yield handle
        finally:
            stop.set()
            renewer.join()
            if not handle.lost.is_set():
                self._release(lease_name, holder)

    def acquire(self, lease_name: str, holder: str, wait_s: float, what: str) -> None:
        deadline = self.clock() + wait_s
        observed = Observed()
        while True:
            lease = self._read(lease_name)
            if lease is None:
                if self._create(lease_name, holder):
                    return
                continue  # another taker created it first: read it
            spec = lease.spec
            unchanged = observed.unchanged_for(
                (spec.holder_identity, str(spec.renew_time), lease.metadata.resource_version),
                self.clock())
            duration = spec.lease_duration_seconds or LEASE_SECONDS
            current = spec.holder_identity
            if (not current or current == holder or unchanged >= duration
                    or self.holder_is_dead(current)):
                if current and current != holder:
                    log.warning("taking over the Lease %s from %s (%s)", lease_name, current,
                                "its process is gone" if unchanged < duration
                                else f"not renewed for {unchanged:.0f} s")
                if self._take(lease, holder):
                    return
                continue
            if self.clock() >= deadline:
                raise LeaseHeldError(
                    f"{what} is held by {current} (Lease {self.namespace}/{lease_name}, "
                    f"last renewed {spec.renew_time}; it expires once nobody renews it for "
                    f"{duration} s). Wait for that rollout to finish, or pass --lease-wait "
                    f"{duration + 10} to wait for it (a killed controller's Lease frees "
                    f"itself after {duration} s)")
            self.sleep(min(self.retry_period_s / 2, max(deadline - self.clock(), 0.1)))

    def _read(self, lease_name: str, attempts: int = api.ATTEMPTS) -> Any | None:
        try:
            return api.call(f"read the Lease {self.namespace}/{lease_name}",
                            self.leases.read_namespaced_lease, lease_name, self.namespace,
                            sleep=self.sleep, attempts=attempts)
        except Exception as err:
            if not api.is_api_error(err):
                raise
            if api.status_of(err) == 404:
                return None
            raise api.refused(f"read the Lease {self.namespace}/{lease_name}", err) from err

    def _create(self, lease_name: str, holder: str) -> bool:
        now = micro_time(dt.datetime.now(dt.UTC))
        body = self._body(lease_name, None, {"holderIdentity": holder,
                                             "leaseDurationSeconds": LEASE_SECONDS,
                                             "acquireTime": now, "renewTime": now,
                                             "leaseTransitions": 0})
        return self._write("create", lease_name, self.leases.create_namespaced_lease,
                           self.namespace, body)

    def _take(self, lease: Any, holder: str) -> bool:
        spec, now = lease.spec, micro_time(dt.datetime.now(dt.UTC))
        transitions = (spec.lease_transitions or 0) + (spec.holder_identity != holder)
        body = self._body(lease.metadata.name, lease.metadata.resource_version,
                          {"holderIdentity": holder, "leaseDurationSeconds": LEASE_SECONDS,
                           "acquireTime": now, "renewTime": now,
                           "leaseTransitions": transitions})
        return self._write("take", lease.metadata.name, self.leases.replace_namespaced_lease,
                           lease.metadata.name, self.namespace, body)

    def _write(self, verb: str, lease_name: str, fn: Callable[..., Any], *args: Any,
               attempts: int = api.ATTEMPTS) -> bool:
        """True if written; False if another writer came first (409)."""
        what = f"{verb} the Lease {self.namespace}/{lease_name}"
        try:
            api.call(what, fn, *args, sleep=self.sleep, attempts=attempts)
            return True
        except Exception as err:
            if not api.is_api_error(err):
                raise
            if api.status_of(err) == 409:
                return False
            raise api.refused(what, err) from err

    def _body(self, name: str, resource_version: str | None,
              spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {k: v for k, v in spec.items() if v is not None}}  # a PUT clears them

    def _renew(self, handle: HeldLease, holder: str, stop: threading.Event) -> None:
        """Every retry period, one attempt to renew (as client-go's renew loop: the period is
        the retry, and the deadline is HeldLease.check's)."""
        while not stop.wait(self.retry_period_s):
            try:
                sent_at = self.clock()
                lease = self._read(handle.name, attempts=1)
                current = lease.spec.holder_identity if lease is not None else None
                if current != holder:
                    handle.lose(f"lost the Lease {self.namespace}/{handle.name} to "
                                f"{current or 'nobody (it was deleted or released)'}")
                    return
                body = self._body(handle.name, lease.metadata.resource_version, {
                    "holderIdentity": holder, "leaseDurationSeconds": LEASE_SECONDS,
                    "acquireTime": _micro(lease.spec.acquire_time),
                    "renewTime": micro_time(dt.datetime.now(dt.UTC)),
                    "leaseTransitions": lease.spec.lease_transitions or 0})
                if self._write("renew", handle.name, self.leases.replace_namespaced_lease,
                               handle.name, self.namespace, body, attempts=1):
                    handle.renewed(sent_at)
            except Exception as err:  # keep trying until the deadline; check() tells
                log.warning("could not renew the Lease %s: %s", handle.name, err)
            with contextlib.suppress(LeaseHeldError):
                handle.check()  # declares the loss at the deadline, before expiry
            if handle.lost.is_set():
                return

    def _release(self, lease_name: str, holder: str) -> None:
        """Frees the Lease for the next rollout at once (client-go's ReleaseOnCancel)."""
        try:
            lease = self._read(lease_name)
            if lease is None or lease.spec.holder_identity != holder:
                return
            body = self._body(lease_name, lease.metadata.resource_version, {
                "holderIdentity": None, "leaseDurationSeconds": 1,
                "acquireTime": None, "renewTime": micro_time(dt.datetime.now(dt.UTC)),
                "leaseTransitions": lease.spec.lease_transitions or 0})
            self._write("release", lease_name, self.leases.replace_namespaced_lease,
                        lease_name, self.namespace, body)
        except Exception as err:
            log.warning("could not release the Lease %s (it expires %s s after its last "
                        "renewal): %s", lease_name, LEASE_SECONDS, err)


def _micro(when: dt.datetime | None) -> str | None:
    return micro_time(when) if when is not None else None
