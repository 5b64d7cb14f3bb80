"""Versioned model store in TF Serving layout: <repo>/<name>/<version>/, plus models.config.

`open_repository` picks the implementation: a local path (publish by rename), or an fsspec URL
such as gs://bucket/models (publish by upload + checksum check).
"""

from __future__ import annotations

from pathlib import Path

from shipyard.core.repository import ModelRepository
from shipyard.repository.local import LocalModelRepository, StagingDir
from shipyard.repository.remote import ObjectStoreRepository


def open_repository(location: str | Path) -> ModelRepository:
    text = str(location)
    if text.startswith("file://"):
        return LocalModelRepository(text[len("file://"):])
    if "://" in text:
        return ObjectStoreRepository(text)
    return LocalModelRepository(text)


__all__ = ["LocalModelRepository", "ModelRepository", "ObjectStoreRepository", "StagingDir",
           "open_repository"]
