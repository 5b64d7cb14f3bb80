"""models.config in a model repository: read it, and change one model's entry in it.

Every change re-reads the file under the repository's config lock and replaces only NAME's
entry, so concurrent pushes of different models sharing the file never lose each other's work.
"""

from __future__ import annotations

from shipyard.repository import ModelRepository
from shipyard.serving.config import (
    ModelServing, model_serving, parse_config, render_config, with_model,
)


def read_config(repo: ModelRepository):  # -> ModelServerConfig
    from shipyard.serving.protos import model_server_config_pb2

    text = repo.read_config()
    if text is None:
        return model_server_config_pb2.ModelServerConfig()
    return parse_config(text, source=repo.config_location)


def current_serving(repo: ModelRepository, name: str) -> ModelServing | None:
    with repo.config_lock():
        return model_serving(read_config(repo), name)


def write_entry(repo: ModelRepository, name: str, state: ModelServing | None):
    """Re-reads the file and replaces NAME's entry only, so concurrent pushes of other models
    sharing the file are never lost. Returns the full config written."""
    with repo.config_lock():
        config = with_model(read_config(repo), name, repo.serving_base_path(name), state)
        repo.write_config(render_config(config))
        return config
