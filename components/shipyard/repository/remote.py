"""A model repository on an object store, through fsspec (gs://, s3://, memory:// in tests).

Object stores have no rename, so a version cannot appear atomically. Instead, TF Serving is
configured with `specific` versions only: a version directory exists before it is complete,
but no server loads it until models.config names it, and `shipyard push` names only
versions whose every file matches shipyard.json. Publishing therefore uploads every file,
the manifest last, reads every file back to check its sha256 against the manifest, and
removes the upload if anything differs.

Staging happens on local disk (TensorFlow writes the SavedModel there). Locks are local file
locks keyed by the repository URL: they serialize shipyard runs on one machine; across
machines, MLflow's version numbering (`shipyard register`) and the Kubernetes Lease of a
rollout are the authority.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from shipyard.core.errors import ShipyardError, UsageError, VersionExistsError
from shipyard.core.manifest import (
    MANIFEST_NAME,
    MANIFEST_PATH,
    SIGNATURE_PATH,
    Manifest,
    list_files,
    read_manifest,
)
from shipyard.core.names import validate_model_name
from shipyard.core.vocabulary import CONFIG_NAME
from shipyard.files.locks import CONFIG_LOCK_TIMEOUT_S, SERVING_LOCK_TIMEOUT_S, held
from shipyard.files.storage import DIRECTORY_ENTRY_BYTES, guarded
from shipyard.repository.local import PUBLISH_LOCK_TIMEOUT_S, StagingDir

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def check_url(url: str) -> tuple[str, str]:
    """A scheme some filesystem knows and a bucket or folder after it, else a UsageError
    naming `repo`, the URL and the fix; returns (scheme, path). Reads nothing."""
    import fsspec

    protocol, _, path = url.partition("://")
    unknown = UsageError(
        f"repo {url}: "
        + (f"{protocol}:// is not a storage URL scheme" if protocol.strip()
           else "no URL scheme before ://")
        + "; give a local path, a file:// URL, or an object store's URL such as "
        "gs://bucket/models or s3://bucket/models", param="repo")
    if not protocol.strip():  # fsspec would take "" for the local file system
        raise unknown
    try:  # fsspec's own lookup: its known schemes and any filesystem registered in-process
        fsspec.get_filesystem_class(protocol)
    except ValueError:  # "Protocol not known"
        raise unknown from None
    except ImportError:
        pass  # a known scheme whose backend is missing: url_to_fs says which
    # Checked after the scheme: for foo:// the fix is another scheme, not a bucket.
    if not path.strip("/"):
        raise UsageError(f"repo {url}: name a bucket or folder after {protocol}://, "
                         f"e.g. {protocol}://models-bucket/models", param="repo")
    return protocol, path


class ObjectStoreRepository:
    def __init__(self, url: str):
        import fsspec

        protocol, path = check_url(url)
        self.location = f"{protocol}://{path.rstrip('/')}"
        try:
            self.fs, self._root = fsspec.core.url_to_fs(self.location)
        except (ImportError, ValueError, OSError) as err:  # a known scheme, backend missing
            raise ShipyardError(
                f"repo {url}: no filesystem for this URL ({err}); install the fsspec "
                "backend for it (gcsfs for gs://, s3fs for s3://)", param="repo") from None
        # Keyed by the store's own name for the root, so spellings of one place
        # (gs:// and gcs://, memory://x and memory:///x) share their locks.
        canonical = self.fs.unstrip_protocol(self._root)
        key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        self._lock_dir = Path(tempfile.gettempdir()) / "shipyard-locks" / key
        if self._is_file(self._root):
            raise UsageError(
                f"repo {url}: {self.location} is a file, not a folder; give the model "
                "repository's folder (the first export creates it), e.g. "
                f"{protocol}://models-bucket/models", param="repo")

    def _is_file(self, path: str) -> bool:
        try:
            return bool(self.fs.isfile(path))
        except Exception:  # unreachable or forbidden: the command's own reads say so
            return False

    # --- where things are -------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *parts])

    def _url(self, *parts: str) -> str:
        return "/".join([self.location, *parts])

    is_local = False

    def local_version_dir(self, name: str, version: int) -> Path | None:
        return None  # in the object store

    def version_location(self, name: str, version: int) -> str:
        return self._url(validate_model_name(name), str(version))

    def serving_base_path(self, name: str) -> str:
        return self._url(validate_model_name(name))

    @property
    def config_location(self) -> str:
        return self._url(CONFIG_NAME)

    # --- versions -----------------------------------------------------------------------
    def _version_numbers(self, name: str) -> list[int]:
        """Every integer-named directory, complete or not."""
        model_path = self._path(validate_model_name(name))
        if not self.fs.isdir(model_path):
            return []
        names = [entry.rstrip("/").rsplit("/", 1)[-1]
                 for entry in self.fs.ls(model_path, detail=False)]
        return sorted(int(n) for n in names if n.isascii() and n.isdigit())

    def versions(self, name: str) -> list[int]:
        """Published versions, ascending: those whose manifest (uploaded last) exists."""
        return [v for v in self._version_numbers(name)
                if self.fs.exists(self._path(name, str(v), MANIFEST_PATH))]

    def symlinked_versions(self, name: str) -> dict[int, str]:
        return {}  # object stores have no symlinks

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def version_exists(self, name: str, version: int) -> bool:
        return self.fs.exists(self._path(validate_model_name(name), str(version)))

    def ensure_version_free(self, name: str, version: int) -> None:
        if self.version_exists(name, version):
            raise VersionExistsError(
                f"version: {self.version_location(name, version)} already exists and "
                f"published versions are never overwritten; omit --version to use "
                f"{self._next_version(name)}, or pass an unused number", param="version")

    def read_manifest(self, name: str, version: int) -> Manifest | None:
        path = self._path(validate_model_name(name), str(version), MANIFEST_PATH)
        if not self.fs.exists(path):
            return None
        return Manifest.from_json(json.loads(self.fs.cat_file(path)))

    def checksum_problems(self, name: str, version: int, manifest: Manifest) -> list[str]:
        """Files whose size or sha256 differ from the manifest, or that are missing."""
        problems = []
        for entry in manifest.files:
            path = self._path(name, str(version), entry["path"])
            if not self.fs.exists(path):
                problems.append(f"{entry['path']}: missing")
            elif (self.fs.size(path) != entry["size"]
                  or self._sha256(path) != entry["sha256"]):
                problems.append(f"{entry['path']}: content differs from {MANIFEST_NAME}")
        return problems

    def version_bytes(self, name: str, version: int) -> int:
        return int(self.fs.du(self._path(validate_model_name(name), str(version))))

    def remove_version(self, name: str, version: int) -> None:
        self.fs.rm(self._path(validate_model_name(name), str(version)), recursive=True)

    # --- staging and publish --------------------------------------------------------------
    def create_staging(self, name: str) -> StagingDir:
        validate_model_name(name)
        # A private parent directory, so StagingDir.discard's clean-up of an empty parent
        # removes exactly it.
        temporary = Path(tempfile.gettempdir())
        with guarded(f"create a staging directory in {temporary}", temporary,
                     needed=DIRECTORY_ENTRY_BYTES, flag="TMPDIR", after="Nothing was written."):
            parent = Path(tempfile.mkdtemp(prefix="shipyard-"))
            lock = FileLock(parent / "staging.lock")
            lock.acquire()
            path = parent / "staging"
            path.mkdir()
        return StagingDir(path=path, _lock=lock)

    def remove_abandoned_staging(self, name: str) -> list[Path]:
        return []  # staging is in a private temporary directory; the object store has none

    def publish(self, staging: StagingDir, name: str, version: int | None = None,
                precheck: Callable[[], None] | None = None) -> int:
        """Uploads `staging` as version `version` (default: next free), checks every file
        against the manifest, and returns the version. The local staging copy stays with
        `staging` (its discard removes it)."""
        with self.publish_lock(name):
            if precheck is not None:
                precheck()
            if version is None:
                version = self._next_version(name)
            self._remove_unfinished_upload(name, version)
            self.ensure_version_free(name, version)
            manifest = read_manifest(staging.path)
            target = self._path(name, str(version))
            source = self._same_store(getattr(staging, "copy_from", None))
            try:
                for entry in list_files(staging.path):  # but the manifest and signature
                    self._put(staging.path, source, entry["path"], target)
                # The signature and the manifest from staging itself, never server-side: a
                # copy re-signed for this repository has its own (steps.copy).
                if (staging.path / SIGNATURE_PATH).is_file():
                    self._put(staging.path, None, SIGNATURE_PATH, target)
                # Last: a version without a manifest is an unfinished upload to everyone.
                self._put(staging.path, None, MANIFEST_PATH, target)
                problems = self.checksum_problems(name, version, manifest)
                if problems:
                    listed = "\n".join(f"  - {p}" for p in problems)
                    raise ShipyardError(
                        f"the upload of {self.version_location(name, version)} does not match "
                        f"its {MANIFEST_NAME}; it was removed and nothing was published:\n"
                        f"{listed}")
            except BaseException:
                if self.fs.exists(target):
                    self.fs.rm(target, recursive=True)
                raise
        log.info("published %s", self.version_location(name, version))
        return version

    def server_side_from(self, location: str | None) -> bool:
        """Whether a version at `location` is copied server-side when published here."""
        return self._same_store(location) is not None

    def _same_store(self, location: str | None) -> str | None:
        """`location`'s path on this repository's store, if it is on the same one (then files
        are copied server-side: fsspec's `copy`, e.g. GCS's rewrite, S3's CopyObject)."""
        if location is None:
            return None
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return path if type(fs) is type(self.fs) and fs.storage_options == \
            self.fs.storage_options else None

    def _put(self, local: Path, source: str | None, relative: str, target: str) -> None:
        if source is not None:
            self.fs.copy(f"{source}/{relative}", f"{target}/{relative}")
        else:
            self.fs.put_file(str(local / relative), f"{target}/{relative}")

    def _remove_unfinished_upload(self, name: str, version: int) -> None:
        """A directory N without a manifest is an upload a killed run left behind (the
        manifest goes last). Under the publish lock nobody else is uploading N, so a run
        publishing N again (e.g. `register` completing its registered version) replaces it."""
        target = self._path(name, str(version))
        if self.fs.exists(target) and not self.fs.exists(f"{target}/{MANIFEST_PATH}"):
            log.warning("removing the unfinished upload %s", self.version_location(name, version))
            self.fs.rm(target, recursive=True)

    def _next_version(self, name: str) -> int:
        # Unfinished uploads count: another machine may still be uploading that number.
        numbers = self._version_numbers(name)
        return (numbers[-1] if numbers else 0) + 1

    def _sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    # --- models.config and locks ---------------------------------------------------------
    def read_config(self) -> str | None:
        path = self._path(CONFIG_NAME)
        return self.fs.cat_file(path).decode() if self.fs.exists(path) else None

    def write_config(self, text: str) -> None:
        # One PUT: object stores replace an object atomically.
        self.fs.pipe_file(self._path(CONFIG_NAME), text.encode())

    @contextlib.contextmanager
    def publish_lock(self, name: str) -> Iterator[None]:
        with held(self._lock_dir / f"{name}.publish.lock", PUBLISH_LOCK_TIMEOUT_S,
                  f"publish of {name}"):
            yield

    @contextlib.contextmanager
    def serving_lock(self, name: str) -> Iterator[None]:
        """As the local repository's: only for a model the repository has, so a mistyped
        --repo or --name leaves no lock file behind."""
        model_path = self._path(validate_model_name(name))
        if not self.fs.isdir(model_path):
            raise UsageError(f"name {name}: the repository {self.location} has no model "
                             f"{name!r} (no {self._url(name)}); check --name and --repo",
                             param="name")
        with held(self._lock_dir / f"{name}.serving.lock", SERVING_LOCK_TIMEOUT_S,
                  f"push/gc of {name}"):
            yield

    @contextlib.contextmanager
    def config_lock(self) -> Iterator[None]:
        with held(self._lock_dir / "models.config.lock", CONFIG_LOCK_TIMEOUT_S, CONFIG_NAME):
            yield


