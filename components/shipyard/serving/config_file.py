"""models.config in a model repository: read it, and change one model's entry in it.

Every change re-reads the file under the repository's config lock and replaces only NAME's
entry, so concurrent pushes of different models sharing the file never lose each other's work.
Reads take no lock: every write replaces the file whole.
"""

from __future__ import annotations

from typing import Any, Callable

from shipyard.core.repository import ModelRepository
from shipyard.serving.config import (
    ModelServing,
    model_serving,
    parse_config,
    render_config,
    with_model,
)


def read_config(repo: ModelRepository):  # -> ModelServerConfig
    from shipyard.serving.protos import model_server_config_pb2

    text = repo.read_config()
    if text is None:
        return model_server_config_pb2.ModelServerConfig()
    return parse_config(text, source=repo.config_location)


def current_serving(repo: ModelRepository, name: str) -> ModelServing | None:
    return model_serving(read_config(repo), name)


def write_entry(repo: ModelRepository, name: str, state: ModelServing | None,
                then: Callable[[Any], None] | None = None):
    """Replaces NAME's entry (None: removes it) and returns the full config written.

    `then(config)` runs before the lock is released: sending the config to the server there
    means servers receive configs in the order the file had them, so a slower push can never
    send an older file over a newer one.
    """
    with repo.config_lock():
        config = with_model(read_config(repo), name, repo.serving_base_path(name), state)
        repo.write_config(render_config(config))
        if then is not None:
            then(config)
        return config
