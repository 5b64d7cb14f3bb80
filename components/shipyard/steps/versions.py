"""One version per content, under concurrency: which registered version a `register` uses.

MLflow numbers versions and shipyard has no lock spanning machines, so concurrent
registrations of one content (two pipeline runs retrying the same training) cannot agree
beforehand on who registers it. They agree afterwards - create, then resolve:

1. A run looks for versions carrying its fingerprint (`shipyard.fingerprint`). If there is
   none, it registers its own, tagged `shipyard.owner` (core.claims.Owner: host, pid, start
   time, token) and `shipyard.published=false`, and looks again.
2. The content keeps ONE version: the oldest published one carrying the fingerprint, else the
   oldest (lowest number; core.claims.winner). MLflow gives numbers in creation order and a
   version is published only by the runs that chose it, so every run chooses the same one,
   whatever the interleaving: two racing runs can neither both defer nor both keep theirs.
3. A run whose own version is not that one gives way: its run is marked FAILED with
   `shipyard.superseded_by=<run id holding the version kept>`, then its unpublished version
   is deleted (never its directory: it published none). Versions left by given-way runs that
   died between those two steps are deleted by the next run of that content that sees them.
4. The version kept is published: by its own run if this is it; if it is already published,
   this run reuses it (`reused: true`, like a re-run of published content). If it is still
   pending, this run waits for its owner to publish it, bounded by the command's
   `--wait-timeout` (WAIT_TIMEOUT_S by default), polling every POLL_S.
5. The owner may have died with its version pending (killed, machine lost). On this machine
   (same host name, boot and pid namespace) that is seen at once - its process is gone, or
   its registration has ended in this process - and this run takes the version over without
   waiting. An owner on another machine cannot be seen: after the bound this run takes the
   version over all the same. Taking over is publishing directory N from this run's staging,
   which holds the same content (same fingerprint), and completing N's tags, run and
   `candidate`; it reports `reused: false`. If the owner was alive after all, both publish
   the same N with the same bytes: the second finds the directory holding its content and
   goes on (steps.register._publish). Two versions are never published for one content.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from shipyard.core.claims import Owner, may_be_alive, winner
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.vocabulary import OWNER_TAG, PUBLISHED_TAG
from shipyard.registry.client import ModelRegistry

log = logging.getLogger(__name__)

WAIT_TIMEOUT_S = 600.0  # a remote repository's publish is an upload of the whole model
POLL_S = 1.0

_live_tokens: set[str] = set()  # registrations running in this process
_live_lock = threading.Lock()


@dataclass
class Chosen:
    """The version a registration uses. `created`: this run registered it; `published`: it
    was already published when chosen (a reuse); `tags`: its tags as last read or written."""
    version: int
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    created: bool = False
    published: bool = False


@contextlib.contextmanager
def registration() -> Iterator[Owner]:
    """This registration's owner identity, live (in `_live_tokens`) while the block runs."""
    token = uuid.uuid4().hex[:12]
    with _live_lock:
        _live_tokens.add(token)
    try:
        yield Owner(_namespace(), os.getpid(), _start_time(os.getpid()), token)
    finally:
        with _live_lock:
            _live_tokens.discard(token)


def choose_version(registry: ModelRegistry, name: str, fingerprint: str, owner: Owner,
                   create: Callable[[dict[str, str]], tuple[int, str, dict[str, str]]], *,
                   wait_timeout_s: float = WAIT_TIMEOUT_S, progress: Progress = NullProgress(),
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Chosen:
    """Steps 1-5 of the module docstring. `create(extra_version_tags)` registers this run's
    version (run + version) and returns (version, run_id, version tags)."""
    deadline = clock() + wait_timeout_s
    mine: Chosen | None = None
    while True:
        versions = registry.versions_with_fingerprint(name, fingerprint)
        best = winner(versions)
        if best is None:
            version, run_id, tags = create({OWNER_TAG: owner.to_tag()})
            mine = Chosen(version, run_id, tags, created=True)
            continue
        if mine is not None and int(best.version) == mine.version:
            _drop_dead_losers(registry, name, versions, best)
            return mine
        if mine is not None:
            with progress.step(f"version {best.version} holds this content already: "
                               f"version {mine.version} gives way"):
                _give_way(registry, name, mine.version, mine.run_id, best.run_id)
            mine = None
        _drop_dead_losers(registry, name, versions, best)
        chosen = Chosen(int(best.version), best.run_id, dict(best.tags))
        if best.tags.get(PUBLISHED_TAG) == "true":
            chosen.published = True
            return chosen
        holder = Owner.from_tag(best.tags.get(OWNER_TAG))
        if not _alive(holder, owner):
            return chosen  # its registration is gone: this run completes it
        if clock() >= deadline:
            log.warning("version %s of %r (this content) was registered by %s but not "
                        "published within %.0f s; this run publishes it", best.version, name,
                        _describe(holder), wait_timeout_s)
            return chosen
        with progress.step(f"wait for version {best.version}, registered by "
                           f"{_describe(holder)}, to be published (up to "
                           f"{max(0.0, deadline - clock()):.0f} s more)"):
            _wait_for_change(registry, name, fingerprint, best, owner, deadline, clock, sleep)


def _wait_for_change(registry: ModelRegistry, name: str, fingerprint: str, best: Any,
                     owner: Owner, deadline: float, clock: Callable[[], float],
                     sleep: Callable[[float], None]) -> None:
    """Polls until `best` is published, no longer the version kept, or ownerless, or until
    the deadline; the caller then decides again on what it reads."""
    while clock() < deadline:
        sleep(min(POLL_S, max(0.0, deadline - clock())))
        now = winner(registry.versions_with_fingerprint(name, fingerprint))
        if (now is None or now.version != best.version
                or now.tags.get(PUBLISHED_TAG) == "true"
                or not _alive(Owner.from_tag(now.tags.get(OWNER_TAG)), owner)):
            return


def _give_way(registry: ModelRegistry, name: str, version: int, run_id: str,
              kept_run_id: str) -> None:
    # The run first: killed between the two, the version is left to _drop_dead_losers of the
    # next run, while a run left FINISHED without its version would say nothing.
    registry.supersede_run(run_id, by=kept_run_id)
    registry.delete_version(name, version)


def _drop_dead_losers(registry: ModelRegistry, name: str, versions: list[Any],
                      best: Any) -> None:
    """Deletes the unpublished versions of this content other than the one kept whose
    registrations have ended: runs that died giving way (a live one gives way itself)."""
    here = _here()
    for v in versions:
        if (v.version == best.version or v.tags.get(PUBLISHED_TAG) == "true"
                or may_be_alive(Owner.from_tag(v.tags.get(OWNER_TAG)), here,
                                _tokens(), _start_time)):
            continue
        log.info("deleting version %s of %r: a registration of the same content as version "
                 "%s that ended before giving way", v.version, name, best.version)
        if v.run_id and v.run_id != best.run_id:
            registry.supersede_run(v.run_id, by=best.run_id)
        registry.delete_version(name, int(v.version))


def _alive(holder: Owner | None, owner: Owner) -> bool:
    return may_be_alive(holder, owner, _tokens(), _start_time)


def _here() -> Owner:
    return Owner(_namespace(), os.getpid(), _start_time(os.getpid()), "")


def _tokens() -> set[str]:
    with _live_lock:
        return set(_live_tokens)


def _describe(holder: Owner | None) -> str:
    if holder is None:
        return "another registration"
    return f"pid {holder.pid} on {holder.host.split('/')[0]}"


def _namespace() -> str:
    """Where a pid means one process: host name, kernel boot and pid namespace."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when there is no such
    process. Without /proc (not Linux), 0 for any live process: liveness by pid alone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] in ("Z", "X"):
            return None  # exited, not yet reaped
        return int(fields[19])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError, ValueError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0
