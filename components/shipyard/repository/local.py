"""A model repository on a local (or mounted) filesystem.

Layout: <root>/<name>/<N>/ is version N in TF Serving layout. TF Serving only considers
directories whose name is an integer, so a version is written under a staging name
(`.staging-<id>`) in the same directory and renamed to N once verified: rename is atomic on one
filesystem, so a server polling the directory never sees a half-written version.

A staging directory is owned through an flock on `.staging-<id>.lock`; the kernel drops the lock
when its process dies (even by SIGKILL), so any run can tell abandoned staging directories
from live ones and remove them.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from shipyard.errors import ShipyardError, VersionExistsError
from shipyard.names import validate_model_name

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PUBLISH_LOCK = ".publish.lock"
PUBLISH_LOCK_TIMEOUT_S = 300


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StagingDir:
    """A directory a version is written into before it is published; removed if abandoned."""

    path: Path
    _lock: FileLock = field(repr=False)
    published: bool = False

    def discard(self) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)
        if not self.published:
            try:  # a failed first export of a model leaves no empty <repo>/<name> behind
                self.path.parent.rmdir()
            except OSError:
                pass  # not empty: other versions or runs live there

    def __enter__(self) -> StagingDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class LocalModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version)

    def versions(self, name: str) -> list[int]:
        """Published versions, ascending (integer-named directories only)."""
        model_dir = self.model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir()
                      if p.is_dir() and p.name.isascii() and p.name.isdigit())

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def ensure_version_free(self, name: str, version: int) -> None:
        if self.version_dir(name, version).exists():
            raise VersionExistsError(
                f"--version: {self.version_dir(name, version)} already exists and published "
                f"versions are never overwritten; omit --version to use "
                f"{self._next_version(name)}, or pass an unused number")

    def create_staging(self, name: str) -> StagingDir:
        """A fresh staging directory inside <root>/<name>, after removing abandoned ones."""
        model_dir = self.model_dir(name)
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ShipyardError(f"--repo: cannot create {model_dir}: {err.strerror}") from None
        self.remove_abandoned_staging(name)
        staging_id = uuid.uuid4().hex[:12]
        lock = FileLock(model_dir / f"{STAGING_PREFIX}{staging_id}.lock")
        lock.acquire()
        path = model_dir / f"{STAGING_PREFIX}{staging_id}"
        path.mkdir()
        return StagingDir(path=path, _lock=lock)

    def remove_abandoned_staging(self, name: str) -> list[Path]:
        """Removes staging directories whose owning process is gone; returns them."""
        removed = []
        model_dir = self.model_dir(name)
        for path in sorted(model_dir.glob(f"{STAGING_PREFIX}*")):
            if path.suffix == ".lock" or not path.is_dir():
                continue
            # `.staging-<id>` and its companions (`.staging-<id>.<suffix>`, e.g. the MLflow
            # upload folder) all belong to whoever holds `.staging-<id>.lock`.
            staging_id = path.name[len(STAGING_PREFIX):].split(".")[0]
            lock_path = model_dir / f"{STAGING_PREFIX}{staging_id}.lock"
            lock = FileLock(lock_path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live run owns it
            try:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.info("removed abandoned staging directory %s", path)
            finally:
                lock.release()
                lock_path.unlink(missing_ok=True)
        return removed

    def publish(self, staging: StagingDir, name: str, version: int | None = None,
                precheck: Callable[[], None] | None = None) -> int:
        """Renames `staging` to version `version` (default: next free) and returns it.

        The version number is chosen under a lock, so concurrent runs get distinct numbers;
        `precheck` (e.g. the signature diff against the latest version) runs under the same
        lock, so no other run can publish between the check and the rename.
        """
        model_dir = self.model_dir(name)
        # A version must survive a power loss intact once TF Serving can see it.
        _fsync_tree(staging.path)
        lock_path = model_dir / PUBLISH_LOCK
        try:
            lock = FileLock(lock_path, timeout=PUBLISH_LOCK_TIMEOUT_S)
            lock.acquire()
        except Timeout:
            raise ShipyardError(
                f"another run has been publishing {name} for over {PUBLISH_LOCK_TIMEOUT_S} s "
                f"(it holds {lock_path}); wait for it to finish or stop it") from None
        try:
            if precheck is not None:
                precheck()
            if version is None:
                version = self._next_version(name)
            target = model_dir / str(version)
            # os.rename would silently replace an empty directory: check under the lock.
            self.ensure_version_free(name, version)
            os.rename(staging.path, target)
            staging.published = True
            staging.path = target
            _fsync_dir(model_dir)
        finally:
            lock.release()
        log.info("published %s", target)
        return version

    def _next_version(self, name: str) -> int:
        return (self.latest_version(name) or 0) + 1
