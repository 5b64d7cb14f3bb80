"""Versioned model store in TF Serving layout: <repo>/<name>/<version>/, plus models.config.

`open_repository` picks the implementation: a local path (publish by rename), or an fsspec URL
such as gs://bucket/models (publish by upload + checksum check).
"""

from __future__ import annotations

from pathlib import Path

from shipyard.core.errors import UsageError
from shipyard.core.repository import ModelRepository
from shipyard.repository.local import LocalModelRepository, StagingDir, check_root
from shipyard.repository.remote import ObjectStoreRepository, check_url


def open_repository(location: str | Path) -> ModelRepository:
    """A bad location (an unknown URL scheme, nothing after the scheme, a file where the
    repository's directory should be) is a UsageError naming `repo`, before anything is
    read or written."""
    text = str(location)
    if text.startswith("file://"):
        return LocalModelRepository(_file_url_path(text))
    if "://" in text:
        return ObjectStoreRepository(text)
    return LocalModelRepository(text)


def check_location(location: str | Path) -> None:
    """The checks of `open_repository` that need no object store: for the command line,
    while the arguments are read (before MLflow is asked, TensorFlow loaded or a directory
    created). An object-store path that is a file is found when the repository opens."""
    text = str(location)
    if text.startswith("file://"):
        check_root(_file_url_path(text))
    elif "://" in text:
        check_url(text)
    else:
        check_root(text)


def _file_url_path(url: str) -> str:
    path = url[len("file://"):]
    if not path.strip():
        raise UsageError(f"repo {url}: name a directory after file://, e.g. "
                         "file:///srv/models, or give the path itself", param="repo")
    return path


__all__ = ["LocalModelRepository", "ModelRepository", "ObjectStoreRepository", "StagingDir",
           "check_location", "open_repository"]
