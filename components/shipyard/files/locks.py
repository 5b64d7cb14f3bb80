"""File locks with a bounded wait and an error that names the holder's lock file; and work
directories in $TMPDIR owned through a lock, so the next run removes those of killed runs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from shipyard.core.errors import ShipyardError
from shipyard.files.storage import DIRECTORY_ENTRY_BYTES, guarded

log = logging.getLogger(__name__)

# A push holds its model's lock while the server loads (up to its --timeout, 300 s by
# default, per push); the next push of that model waits for it.
SERVING_LOCK_TIMEOUT_S = 1800
# Held to read-modify-write models.config and send it to the server, which answers once a
# model new to it has loaded.
CONFIG_LOCK_TIMEOUT_S = 900


@contextlib.contextmanager
def held(lock_path: Path, timeout_s: float, what: str) -> Iterator[None]:
    lock = FileLock(lock_path)
    try:
        # Every lock is taken before its holder writes anything: failing here changes nothing.
        with guarded(f"create the lock file {lock_path} ({what})", lock_path,
                     needed=DIRECTORY_ENTRY_BYTES, after="Nothing was changed."):
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=timeout_s)
    except Timeout:
        raise ShipyardError(
            f"another shipyard process has held the {what} lock ({lock_path}) for over "
            f"{timeout_s:g} s; wait for it to finish or stop it") from None
    try:
        yield
    finally:
        lock.release()


# ---- work directories in $TMPDIR -------------------------------------------------------------

WORKDIR_LOCK = ".owner.lock"
# A directory without its lock file was left by a shipyard from before these locks, or by a
# run killed while it created one: only an old one is removed.
UNLOCKED_GRACE_S = 3600.0
# Where a work directory is made and locked before it is renamed to its own name (see
# OwnedWorkdir): a name no `prefix*` pattern matches.
HIDDEN_PREFIX = ".creating-"


class OwnedWorkdir:
    """A fresh directory in $TMPDIR (prefix + random), owned while this process holds an flock
    on its `.owner.lock`. The kernel drops the flock when the process dies, even by SIGKILL,
    so `remove_abandoned_workdirs` can tell a killed run's directory from a live one's; the
    file descriptor is not inherited by children, so a child outliving its parent does not
    keep the directory.

    The directory appears under its name only once its lock is held: it is made and locked
    under a hidden name, then renamed. Made in place, a concurrent run's cleanup could find
    the lock file in the instant between its creation and its flock, take the lock and remove
    a live run's directory (seen: six `register` commands started at once, two of them
    exiting 1 with FileNotFoundError or BlockingIOError; 10 of 1800 directories in a stress
    test; tests/unit/test_locks.py)."""

    def __init__(self, prefix: str):
        remove_abandoned_workdirs(prefix)
        hidden = Path(tempfile.mkdtemp(prefix=HIDDEN_PREFIX + prefix))
        try:
            self._fd: int | None = os.open(hidden / WORKDIR_LOCK,
                                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else sees it yet
            self.path = hidden.with_name(prefix + hidden.name[len(HIDDEN_PREFIX + prefix):])
            # rename(2) onto an existing empty directory would replace it: refuse that.
            if os.path.lexists(self.path):
                raise FileExistsError(f"{self.path} exists")
            os.rename(hidden, self.path)
        except BaseException:
            shutil.rmtree(hidden, ignore_errors=True)
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd)
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_abandoned_workdirs(prefix: str, directory: Path | None = None) -> list[Path]:
    """Removes `prefix*` directories in $TMPDIR whose owner is gone; returns them."""
    root = Path(directory or tempfile.gettempdir())
    removed = []
    for path in sorted(root.glob(f"{HIDDEN_PREFIX}{prefix}*")):
        # Killed between mkdtemp and rename: never renamed, so only its age tells.
        with contextlib.suppress(OSError):
            if (path.is_dir() and not path.is_symlink()
                    and time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    for path in sorted(root.glob(f"{prefix}*")):
        try:
            if path.is_symlink() or not path.is_dir():
                continue
            fd = os.open(path / WORKDIR_LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            continue
        except OSError:
            continue  # another user's, or unreadable: not ours to remove
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by a killed run", path)
        finally:
            os.close(fd)
    return removed
