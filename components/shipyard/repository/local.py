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

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from shipyard.errors import ShipyardError, VersionExistsError
from shipyard.manifest import MANIFEST_PATH, checksum_mismatches
from shipyard.names import validate_model_name
from shipyard.repository.locks import CONFIG_LOCK_TIMEOUT_S, SERVING_LOCK_TIMEOUT_S, held

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PUBLISH_LOCK = ".publish.lock"
PUBLISH_LOCK_TIMEOUT_S = 300
SERVING_LOCK = ".serving.lock"
CONFIG_NAME = "models.config"
TRASH_PREFIX = ".removing-"


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
        self.location = str(root)

    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version)

    def version_location(self, name: str, version: int) -> str:
        return str(self.version_dir(name, version).resolve())

    def version_exists(self, name: str, version: int) -> bool:
        return self.version_dir(name, version).exists()

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
        """Removes staging directories whose owning process is gone, and versions a killed
        gc had renamed away but not yet deleted; returns them."""
        removed = []
        model_dir = self.model_dir(name)
        for path in sorted(model_dir.glob(f"{TRASH_PREFIX}*")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
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
        with self.publish_lock(name):
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
        log.info("published %s", target)
        return version

    def read_manifest(self, name: str, version: int) -> dict[str, Any] | None:
        path = self.version_dir(name, version) / MANIFEST_PATH
        return json.loads(path.read_text()) if path.is_file() else None

    def checksum_problems(self, name: str, version: int, manifest: dict[str, Any]) -> list[str]:
        return checksum_mismatches(self.version_dir(name, version), manifest)

    def version_bytes(self, name: str, version: int) -> int:
        return sum(p.stat().st_size for p in self.version_dir(name, version).rglob("*")
                   if p.is_file())

    def remove_version(self, name: str, version: int) -> None:
        """Renames the version away first (one atomic step for a polling server), then
        deletes it."""
        source = self.version_dir(name, version)
        trash = self.model_dir(name) / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        os.rename(source, trash)
        shutil.rmtree(trash)

    def serving_base_path(self, name: str) -> str:
        """The model's base_path for TF Serving (absolute, as the server requires)."""
        return str(self.model_dir(name).resolve())

    def read_config(self) -> str | None:
        path = self.root / CONFIG_NAME
        return path.read_text() if path.is_file() else None

    def write_config(self, text: str) -> None:
        """Atomically: a server polling the file reads the old or the new config, never half."""
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{CONFIG_NAME}.{uuid.uuid4().hex[:8]}.tmp"
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.root / CONFIG_NAME)
        _fsync_dir(self.root)

    @property
    def config_location(self) -> str:
        return str((self.root / CONFIG_NAME).resolve())

    @contextlib.contextmanager
    def publish_lock(self, name: str) -> Iterator[None]:
        """Held while a version number is chosen and published (and by gc while removing)."""
        with held(self.model_dir(name) / PUBLISH_LOCK, PUBLISH_LOCK_TIMEOUT_S,
                  f"publish of {name}"):
            yield

    @contextlib.contextmanager
    def serving_lock(self, name: str) -> Iterator[None]:
        """One push or gc of NAME at a time."""
        with held(self.model_dir(name) / SERVING_LOCK, SERVING_LOCK_TIMEOUT_S,
                  f"push/gc of {name}"):
            yield

    @contextlib.contextmanager
    def config_lock(self) -> Iterator[None]:
        """Read-modify-write of models.config, shared by every model of the repository."""
        with held(self.root / f".{CONFIG_NAME}.lock", CONFIG_LOCK_TIMEOUT_S, CONFIG_NAME):
            yield

    def _next_version(self, name: str) -> int:
        return (self.latest_version(name) or 0) + 1
