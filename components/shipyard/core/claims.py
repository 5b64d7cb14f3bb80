"""Who registered a pending version, and the decisions concurrent registrations of one
content make from that (pure: the process table is read by the caller, steps.versions).

A registered version carries `shipyard.owner` (vocabulary.OWNER_TAG): the registration that
created it, as {"host", "pid", "started", "token"}. `host` names the process namespace (host
name, kernel boot id, pid namespace), because a pid means something only there; `started` is
the process's start time in clock ticks since boot (so a reused pid is not taken for the
owner); `token` tells apart registrations inside one process (the TFX and KFP front doors
run several in one interpreter, and the kill tests re-run in the process that was cut off).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Collection

from shipyard.core.vocabulary import PUBLISHED_TAG


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: int | None  # None where the start time cannot be read (no /proc)
    token: str

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str | None) -> Owner | None:
        """None for a missing or unreadable tag (a version registered by an older shipyard,
        or written by hand): nobody known to wait for."""
        try:
            data = json.loads(text or "")
            return cls(str(data["host"]), int(data["pid"]),
                       None if data["started"] is None else int(data["started"]),
                       str(data["token"]))
        except (ValueError, TypeError, KeyError):
            return None


def may_be_alive(owner: Owner | None, here: Owner, live_tokens: Collection[str],
                 started_of: Callable[[int], int | None]) -> bool:
    """Whether the registration that owns a pending version may still publish it.

    False only when that is known: no owner recorded; an owner in this process whose
    registration has ended (`live_tokens`: the tokens of the registrations running in this
    process); an owner elsewhere in this namespace whose process is gone or is another
    process under the same pid (`started_of(pid)`: its start time, None if there is none).
    An owner in another namespace (another machine, container) cannot be seen from here:
    it may be alive, and is waited for up to the command's bound."""
    if owner is None:
        return False
    if owner.host != here.host:
        return True
    if owner.pid == here.pid and owner.started == here.started:
        return owner.token in live_tokens
    started = started_of(owner.pid)
    return started is not None and (owner.started is None or started == owner.started)


def winner(versions: list[Any]) -> Any | None:
    """The version a content keeps among those carrying its fingerprint: the oldest
    published one, else the oldest. `versions`: objects with `.version` and `.tags`.

    MLflow numbers versions in the order they are created, and a version is published only
    by the registrations that chose it here, so every registration of one content - however
    they interleave - chooses the same version, and none chooses its own over an older one."""
    published = [v for v in versions if v.tags.get(PUBLISHED_TAG) == "true"]
    return min(published or versions, key=lambda v: int(v.version), default=None)


# --- who holds a rollout's Lease ---------------------------------------------------------------
# The Lease's holderIdentity names the controller's process the same way: readable by people
# (user@host:pid), and precise enough that a controller on the same host can tell that the
# holder's process is gone (killed) and take the rollout over at once instead of waiting for
# the Lease to expire.

_LEASE_HOLDER = re.compile(r":(\d+) \(started (\d+|unknown), ns ([0-9a-f]{12})\)$")


def lease_holder(user: str, host: str, pid: int, started: int | None, namespace: str) -> str:
    return (f"{user}@{host}:{pid} (started {started if started is not None else 'unknown'}, "
            f"ns {_short(namespace)})")


def lease_holder_gone(identity: str, namespace: str,
                      started_of: Callable[[int], int | None]) -> bool:
    """True only when it is known that the process named by a Lease's holder `identity` has
    ended: it ran in this process namespace and its pid is gone or is another process now.
    Another namespace (host, container) cannot be seen from here: False."""
    match = _LEASE_HOLDER.search(identity or "")
    if match is None or match.group(3) != _short(namespace):
        return False
    now = started_of(int(match.group(1)))
    return now is None or (match.group(2) != "unknown" and now != int(match.group(2)))


def _short(namespace: str) -> str:
    return hashlib.sha256(namespace.encode()).hexdigest()[:12]
