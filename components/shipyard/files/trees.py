"""Trees of files placed elsewhere without writing their bytes again where possible.

Locations are local paths or fsspec URLs (gs://, s3://, ...): a TFX pipeline whose root is in
an object store gives its artifacts such URIs, and `Path("gs://b/x")` would silently turn one
into the local path `gs:/b/x`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def materialize(location: str, target: str | Path) -> None:
    """A published version's files at `target` (an orchestrator's output artifact):
    hard-linked when both are local (its bytes are not written again), else copied, uploaded
    or downloaded."""
    if is_url(target):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(target))
        with contextlib.ExitStack() as stack:
            local = location
            if is_url(location):  # store to store: through a local copy
                local = stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="shipyard-materialize-"))
                materialize(location, local)
            # A trailing slash: the directory's contents go into `path` itself.
            fs.put(str(local).rstrip("/") + "/", path, recursive=True)
        return
    target = Path(target)
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        return
    root = Path(location)
    for path in root.rglob("*"):
        destination = target / path.relative_to(root)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:  # another filesystem
            shutil.copy2(path, destination)


@contextlib.contextmanager
def local_tree(location: str) -> Iterator[Path]:
    """`location` as a local directory: itself when local, else downloaded into a temporary
    directory that is removed afterwards (TensorFlow and Keras load models from local files
    here; the digests read them with open())."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="shipyard-download-") as local:
        materialize(location, local)
        yield Path(local)


def empty_directory(directory: Path) -> None:
    """Removes what is inside `directory` (a first attempt's files), keeping the directory."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
