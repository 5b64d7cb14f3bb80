"""Versioned model store in TF Serving layout: <repo>/<name>/<version>/."""

from shipyard.repository.local import LocalModelRepository, StagingDir

__all__ = ["LocalModelRepository", "StagingDir"]
