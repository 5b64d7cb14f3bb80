"""Versioned model store in TF Serving layout: <repo>/<name>/<version>/, plus models.config.

`open_repository` picks the implementation: a local path (publish by rename), or an fsspec URL
such as gs://bucket/models (publish by upload + checksum check).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

from shipyard.repository.local import LocalModelRepository, StagingDir
from shipyard.repository.remote import ObjectStoreRepository

ModelRepository = Union[LocalModelRepository, ObjectStoreRepository]


def open_repository(location: str | Path) -> ModelRepository:
    text = str(location)
    if text.startswith("file://"):
        return LocalModelRepository(text[len("file://"):])
    if "://" in text:
        return ObjectStoreRepository(text)
    return LocalModelRepository(text)


def materialize(location: str, target: Path) -> None:
    """A published version's files at `target` (an orchestrator's output artifact):
    hard-linked when local (its bytes are not written again), else copied or downloaded."""
    if "://" in location:
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


__all__ = ["LocalModelRepository", "ModelRepository", "ObjectStoreRepository", "StagingDir",
           "materialize", "open_repository"]
