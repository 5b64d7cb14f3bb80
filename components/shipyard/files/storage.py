"""Disk faults where shipyard writes, turned into one StorageError (exit 1).

Why one place: the SavedModel write (TensorFlow), the publish rename, models.config, gc's
removals and the lock files all fail the same few ways: the disk is full, the file system is
read-only, or the user may not write there. Each time a user needs the same four facts to act:
what failed, where, the bytes needed against the bytes free, and the fix. Each boundary wraps
its writes in `guarded(...)` and says what it leaves behind ("after"); this module phrases the
rest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from shipyard.core.errors import StorageError

_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# TensorFlow's file errors (ResourceExhaustedError, PermissionDeniedError, UnknownError, ...)
# carry no errno, only "<path>; <strerror>", e.g. "/r/m/.staging-x/saved_model.pb.tmp...; No
# space left on device".
_STRERRORS = {os.strerror(code): code for code in _FAULTS}
# A directory entry (mkdir, rename, an empty lock file) needs at most one block.
DIRECTORY_ENTRY_BYTES = 4096


def fault_of(err: BaseException) -> tuple[int, str | None] | None:
    """(errno, the failing path if known) when `err`, or what it was raised from, is a disk
    fault; else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FAULTS:
            return current.errno, current.filename
        # Only OSError and TensorFlow's own errors are read by their text: an HTTP error saying
        # "Permission denied" is not a disk fault.
        if isinstance(current, OSError) or type(current).__module__.startswith("tensorflow"):
            text = str(current)
            for strerror, code in _STRERRORS.items():
                if strerror in text:
                    head = text.split(";")[0].strip()
                    return code, head if head.startswith("/") else None
        current = current.__cause__ or current.__context__
    return None


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 if it is gone); never follows symlinks."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, filename)).st_size
    return total


def path_bytes(path: Path) -> int:
    """Size of a file, or of the files of a directory."""
    try:
        return tree_bytes(path) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    path = nearest_existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def guarded(operation: str, path: Path | str, *, needed: int | Callable[[], int],
            needed_note: str = "", after: str = "", flag: str = "--repo") -> Iterator[None]:
    """Runs the block; a disk fault in it becomes a StorageError.

    operation: what was being done, with its path ("write models.config in /r").
    path: where; the file system whose free space is reported is that of its nearest existing
    directory. needed: bytes the operation writes (or a function computing them when it
    failed). after: what the failure leaves behind, e.g. "models.config is unchanged.".
    flag: the setting that chooses the place (--repo, TMPDIR).
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        fault = fault_of(err)
        if fault is None:
            raise
        code, _ = fault
        bytes_needed = needed() if callable(needed) else needed
        raise storage_error(operation, Path(path), code, bytes_needed, needed_note=needed_note,
                            after=after, flag=flag) from err


def storage_error(operation: str, path: Path, code: int, needed: int, *, needed_note: str = "",
                  after: str = "", flag: str = "--repo") -> StorageError:
    where = nearest_existing(path)
    mount = mount_point(path)
    try:
        free = shutil.disk_usage(where).free
        inodes = os.statvfs(where).f_favail
    except OSError:
        free, inodes = -1, -1
    space = (f"{_bytes(needed)} needed{needed_note}, "
             + (f"{_bytes(free)} free" if free >= 0 else "free space unknown")
             + (f" and {inodes} inodes free" if code == errno.ENOSPC and inodes >= 0 else "")
             + f" on {mount}")
    elsewhere = (f"choose another {flag}" if flag.startswith("-")
                 else f"point {flag} at another directory")
    if code in (errno.ENOSPC, errno.EDQUOT):
        short = max(needed - max(free, 0), 0)
        more = f" (at least {_bytes(short)} more)" if short else ""
        if code == errno.ENOSPC and inodes == 0:
            more += " and some inodes (remove files)"
        fix = f"free space on {mount}{more}, or {elsewhere} on a disk with room"
    elif code == errno.EROFS:
        fix = (f"remount {mount} read-write (mount -o remount,rw {mount}), or {elsewhere} "
               "on a writable file system")
    else:
        fix = (f"give user {_user()} write access to {where} ({_owner(where)}), or {elsewhere}"
               " that this user may write")
    text = (f"cannot {operation}: {_FAULTS[code]} ({errno.errorcode[code]}). {space}. "
            f"To fix: {fix}.")
    return StorageError(text + (f" {after}" if after else ""))


def _bytes(count: int) -> str:
    text = f"{count} bytes"
    if count >= 10 * 1024 * 1024:
        return f"{text} ({count / 1024 ** 3:.2f} GiB)" if count >= 1024 ** 3 else \
            f"{text} ({count / 1024 ** 2:.1f} MiB)"
    return text


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _owner(path: Path) -> str:
    try:
        status = path.stat()
    except OSError:
        return "owner unknown"
    return f"owned by uid {status.st_uid}, mode {status.st_mode & 0o7777:04o}"


def writing_export(staging: Path, source: Path, *,
                   local: bool) -> contextlib.AbstractContextManager:
    """Guards the writes of an export into its staging directory (SavedModel, warmup,
    shipyard.json). The finished size is not known before TensorFlow writes it, so the bytes
    needed are an estimate, said as such: at least what was written before the failure, or the
    source model's size if larger (its weights are written again)."""
    return guarded(f"write the SavedModel to {staging}", staging,
                   needed=lambda: max(tree_bytes(staging), path_bytes(Path(source))),
                   needed_note=" (at least: what was written before the failure, or the "
                               "source model's size)",
                   after="Nothing was published: the staging directory is removed.",
                   flag="--repo" if local else "TMPDIR")


def writing_verifier_inputs(workdir: Path) -> contextlib.AbstractContextManager:
    """Guards the reference inputs and outputs the export writes for its verifier."""
    return guarded(f"write the verification inputs to {workdir}", workdir,
                   needed=lambda: tree_bytes(workdir),
                   needed_note=" (at least: what was written before the failure)",
                   after="Nothing was published: the staging directory is removed.",
                   flag="TMPDIR")
