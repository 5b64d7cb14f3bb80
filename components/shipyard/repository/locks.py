"""File locks with a bounded wait and an error that names the holder's lock file."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from shipyard.errors import ShipyardError

SERVING_LOCK_TIMEOUT_S = 600  # a push waits for a model to load; the next one waits for it
CONFIG_LOCK_TIMEOUT_S = 60  # held only to read-modify-write models.config


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
