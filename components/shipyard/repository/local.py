"""A model repository on a local (or mounted) filesystem.

Layout: <root>/<name>/<N>/ is version N in TF Serving layout. TF Serving only considers
directories whose name is an integer, so a version is written under a staging name
(`.staging-<id>`) in the same directory and renamed to N once verified: rename is atomic on one
filesystem, so a server polling the directory never sees a half-written version.

A staging directory is owned through an flock on `.staging-<id>.lock`; the kernel drops the lock
when its process dies (even by SIGKILL), so any run can tell abandoned staging directories
(and lock files left without their directory) from live ones and remove them.

A version directory that is a symlink is not shipyard's: it is listed apart
(`symlinked_versions`), never followed, published over, or removed.

Writes that fail for lack of space, a read-only file system or permission raise StorageError
(see storage.py) and leave nothing partial.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from shipyard.core.errors import ShipyardError, UsageError, VersionExistsError
from shipyard.core.manifest import Manifest, checksum_mismatches, read_manifest
from shipyard.core.names import validate_model_name
from shipyard.core.vocabulary import CONFIG_NAME
from shipyard.files.locks import CONFIG_LOCK_TIMEOUT_S, SERVING_LOCK_TIMEOUT_S, held
from shipyard.files.storage import DIRECTORY_ENTRY_BYTES, fault_of, guarded, tree_bytes

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PUBLISH_LOCK = ".publish.lock"
PUBLISH_LOCK_TIMEOUT_S = 300
SERVING_LOCK = ".serving.lock"
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


def check_root(root: str) -> None:
    """A repository is a directory, or a path where one can be created (the first export
    does): an empty path, or one that is, or lies under, a file is a usage error naming the
    flag, the value and the fix, before anything is read or written."""
    fix = ("give the model repository's directory (the first export creates it), or an object "
           "store's URL such as gs://bucket/models")
    if not root.strip():
        raise UsageError(f"repo {root!r}: no path given; {fix}", param="repo")
    path = Path(root).absolute()
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.isdir(existing):
        return
    if os.path.islink(existing):
        what = f"{existing} is a symlink to {os.readlink(existing)}, which is not a directory"
    else:
        what = f"{existing} is a file, not a directory"
    where = "" if existing == path else f", so no repository can be created at {path}"
    raise UsageError(f"repo {root}: {what}{where}; {fix}", param="repo")


def _missing_parents(directory: Path) -> tuple[Path, ...]:
    """The ancestors of `directory` that do not exist yet, innermost first."""
    missing = []
    for parent in directory.absolute().parents:
        if os.path.lexists(parent):
            break
        missing.append(parent)
    return tuple(missing)


@dataclass
class StagingDir:
    """A directory a version is written into before it is published; removed if abandoned."""

    path: Path
    _lock: FileLock = field(repr=False)
    published: bool = False
    # Where the same files already are in an object store (a version being copied): a
    # repository on that store copies them there, server-side, instead of uploading them.
    copy_from: str | None = None
    # Directories above <repo>/<name> that creating the staging directory made (a repository
    # that did not exist yet), innermost first: a failed run removes them again if empty.
    _created: tuple[Path, ...] = field(default=(), repr=False)

    def discard(self) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)
        if not self.published:
            # A failed first export of a model leaves no empty <repo>/<name> behind, nor the
            # repository directory (and its parents) if this run created them.
            for directory in (self.path.parent, *self._created):
                try:
                    directory.rmdir()
                except OSError:
                    break  # not empty: other versions, models or runs live there

    def __enter__(self) -> StagingDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class LocalModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(root)
        check_root(str(root))

    is_local = True

    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def local_version_dir(self, name: str, version: int) -> Path | None:
        return self.version_dir(name, version)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version)

    def version_location(self, name: str, version: int) -> str:
        # The last component is not resolved: a symlinked version is named, not followed.
        return str(self.model_dir(name).resolve() / str(version))

    def version_exists(self, name: str, version: int) -> bool:
        # lexists: a dangling symlink named N still takes the number N.
        return os.path.lexists(self.version_dir(name, version))

    def _numbered(self, name: str) -> list[Path]:
        model_dir = self.model_dir(name)
        if not model_dir.is_dir():
            return []
        return [p for p in model_dir.iterdir() if p.name.isascii() and p.name.isdigit()]

    def versions(self, name: str) -> list[int]:
        """Published versions, ascending (integer-named directories, not symlinks)."""
        return sorted(int(p.name) for p in self._numbered(name)
                      if p.is_dir() and not p.is_symlink())

    def symlinked_versions(self, name: str) -> dict[int, str]:
        """Integer-named symlinks in NAME's directory -> their targets. TF Serving may load
        them, but shipyard did not publish them: they are reported, never followed."""
        return {int(p.name): os.readlink(p) for p in sorted(self._numbered(name))
                if p.is_symlink()}

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def ensure_version_free(self, name: str, version: int) -> None:
        if self.version_exists(name, version):
            raise VersionExistsError(
                f"version: {self.version_dir(name, version)} already exists and published "
                f"versions are never overwritten; omit --version to use "
                f"{self._next_version(name)}, or pass an unused number", param="version")

    def create_staging(self, name: str) -> StagingDir:
        """A fresh staging directory inside <root>/<name>, after removing abandoned ones."""
        model_dir = self.model_dir(name)
        created = _missing_parents(model_dir)
        with guarded(f"create a staging directory in {model_dir}", model_dir,
                     needed=DIRECTORY_ENTRY_BYTES, after="Nothing was written."):
            try:
                model_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                if fault_of(err) is not None:
                    raise  # phrased by `guarded`
                raise ShipyardError(f"repo: cannot create {model_dir}: {err.strerror}",
                                    param="repo") from None
            self.remove_abandoned_staging(name)
            staging_id = uuid.uuid4().hex[:12]
            lock_path = model_dir / f"{STAGING_PREFIX}{staging_id}.lock"
            lock = FileLock(lock_path)
            lock.acquire()
            path = model_dir / f"{STAGING_PREFIX}{staging_id}"
            try:
                path.mkdir()
            except BaseException:  # no lock file without its directory
                lock.release()
                lock_path.unlink(missing_ok=True)
                raise
        return StagingDir(path=path, _lock=lock, _created=created)

    def remove_abandoned_staging(self, name: str) -> list[Path]:
        """Removes staging directories whose owning process is gone, and versions a killed
        gc had renamed away but not yet deleted; returns them."""
        removed = []
        model_dir = self.model_dir(name)
        for path in sorted(model_dir.glob(f"{TRASH_PREFIX}*")):
            if path.is_symlink():
                # A symlinked version an older gc renamed before failing on it: shipyard does
                # not remove symlinks, so it goes back to its number.
                self._restore_symlink(path)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        owned: dict[str, list[Path]] = {}
        for path in sorted(model_dir.glob(f"{STAGING_PREFIX}*")):
            if path.is_symlink():
                continue  # not ours: never followed or removed
            # `.staging-<id>` and its companions (`.staging-<id>.<suffix>`, e.g. the MLflow
            # upload folder) all belong to whoever holds `.staging-<id>.lock`; a lock file
            # alone is what a run killed between its lock and its mkdir (or an older shipyard's
            # discard) leaves.
            staging_id = path.name[len(STAGING_PREFIX):].split(".")[0]
            members = owned.setdefault(staging_id, [])
            if path.suffix != ".lock" and path.is_dir():
                members.append(path)
        for staging_id, members in owned.items():
            lock_path = model_dir / f"{STAGING_PREFIX}{staging_id}.lock"
            lock = FileLock(lock_path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live run owns it
            except OSError as err:  # read-only or not ours to write: leave it, keep going
                log.warning("cannot check staging %s: %s", lock_path, err.strerror)
                continue
            try:
                for path in members:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                    log.info("removed abandoned staging directory %s", path)
                if not members:
                    log.info("removed orphan staging lock %s", lock_path)
            finally:
                lock.release()
                lock_path.unlink(missing_ok=True)
        return removed

    def _restore_symlink(self, trash: Path) -> None:
        number = trash.name[len(TRASH_PREFIX):].split("-")[0]
        target = trash.parent / number
        if number.isdigit() and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(trash, target)
                log.warning("restored the symlinked version %s (a symlink is never removed)",
                            target)

    def publish(self, staging: StagingDir, name: str, version: int | None = None,
                precheck: Callable[[], None] | None = None) -> int:
        """Renames `staging` to version `version` (default: next free) and returns it.

        The version number is chosen under a lock, so concurrent runs get distinct numbers;
        `precheck` (e.g. the signature diff against the latest version) runs under the same
        lock, so no other run can publish between the check and the rename.
        """
        model_dir = self.model_dir(name)
        # A version must survive a power loss intact once TF Serving can see it.
        with guarded(f"write the staged version {staging.path} to disk (fsync)", staging.path,
                     needed=lambda: tree_bytes(staging.path),
                     after="Nothing was published: the staging directory is removed."):
            _fsync_tree(staging.path)
        with self.publish_lock(name):
            if precheck is not None:
                precheck()
            if version is None:
                version = self._next_version(name)
            target = model_dir / str(version)
            # os.rename would silently replace an empty directory: check under the lock.
            self.ensure_version_free(name, version)
            with guarded(f"publish {staging.path} as {target}", model_dir,
                         needed=DIRECTORY_ENTRY_BYTES, needed_note=" (a rename)",
                         after="Nothing was published: the staging directory is removed."):
                os.rename(staging.path, target)
            staging.published = True
            staging.path = target
            with contextlib.suppress(OSError):  # published; only the durability of the
                _fsync_dir(model_dir)             # rename's entry is not confirmed
        log.info("published %s", target)
        return version

    def read_manifest(self, name: str, version: int) -> Manifest | None:
        return read_manifest(self.version_dir(name, version))

    def checksum_problems(self, name: str, version: int, manifest: Manifest) -> list[str]:
        return checksum_mismatches(self.version_dir(name, version), manifest)

    def version_bytes(self, name: str, version: int) -> int:
        return tree_bytes(self.version_dir(name, version))

    def remove_version(self, name: str, version: int) -> None:
        """Renames the version away first (one atomic step for a polling server), then
        deletes it. A symlink is refused: its target is not ours to delete."""
        source = self.version_dir(name, version)
        if source.is_symlink():
            raise ShipyardError(f"{source} is a symlink to {os.readlink(source)}; shipyard never "
                                "removes symlinked versions")
        trash = self.model_dir(name) / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        with guarded(f"remove version {version} ({source})", source,
                     needed=DIRECTORY_ENTRY_BYTES, needed_note=" (a rename)",
                     after="Nothing was removed."):
            os.rename(source, trash)
        with guarded(f"delete the files of version {version} ({trash})", trash, needed=0,
                     after=(f"Version {version} is no longer visible to TF Serving (renamed to "
                            f"{trash.name}); the next gc or export removes the rest once the "
                            "cause is fixed.")):
            shutil.rmtree(trash)

    def serving_base_path(self, name: str) -> str:
        """The model's base_path for TF Serving (absolute, as the server requires)."""
        return str(self.model_dir(name).resolve())

    def read_config(self) -> str | None:
        path = self.root / CONFIG_NAME
        return path.read_text() if path.is_file() else None

    def write_config(self, text: str) -> None:
        """Atomically: a server polling the file reads the old or the new config, never half.
        On failure the old file stays as it was and the temporary file is removed."""
        temporary = self.root / f".{CONFIG_NAME}.{uuid.uuid4().hex[:8]}.tmp"
        with guarded(f"write {CONFIG_NAME} in {self.root}", self.root,
                     needed=len(text.encode()), after=f"{CONFIG_NAME} is unchanged."):
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with open(temporary, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, self.root / CONFIG_NAME)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
        with contextlib.suppress(OSError):  # replaced; only its durability is unconfirmed
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
        """One push or gc of NAME at a time, for a model the repository has: taking the lock
        would otherwise create the model's directory, so a mistyped --repo or --name would
        leave one behind (with nothing to push or remove in it)."""
        model_dir = self.model_dir(name)
        if not model_dir.is_dir():
            raise UsageError(f"name {name}: the repository {self.root} has no model {name!r} "
                             f"(no {model_dir}); check --name and --repo", param="name")
        with held(model_dir / SERVING_LOCK, SERVING_LOCK_TIMEOUT_S, f"push/gc of {name}"):
            yield

    @contextlib.contextmanager
    def config_lock(self) -> Iterator[None]:
        """Read-modify-write of models.config, shared by every model of the repository."""
        with held(self.root / f".{CONFIG_NAME}.lock", CONFIG_LOCK_TIMEOUT_S, CONFIG_NAME):
            yield

    def _next_version(self, name: str) -> int:
        # Every integer name counts, symlinks included: N is never published over a link.
        numbers = [int(p.name) for p in self._numbered(name)]
        return max(numbers, default=0) + 1
