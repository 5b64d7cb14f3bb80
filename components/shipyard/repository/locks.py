"""File locks with a bounded wait and an error that names the holder's lock file."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from shipyard.errors import ShipyardError

# A push holds its model's lock while the server loads (up to its --timeout, 300 s by
# default, per push); the next push of that model waits for it.
SERVING_LOCK_TIMEOUT_S = 1800
# Held to read-modify-write models.config and send it to the server, which answers once a
# model new to it has loaded.
CONFIG_LOCK_TIMEOUT_S = 900


@contextlib.contextmanager
def held(lock_path: Path, timeout_s: float, what: str) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise ShipyardError(
            f"another shipyard process has held the {what} lock ({lock_path}) for over "
            f"{timeout_s:g} s; wait for it to finish or stop it") from None
    try:
        yield
    finally:
        lock.release()
