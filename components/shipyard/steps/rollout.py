"""The rollout's alias moves, through the audited alias path (shipyard.steps.alias)."""

from __future__ import annotations

from typing import Any

from shipyard.core.vocabulary import CANARY_ALIAS as CANARY
from shipyard.core.vocabulary import CHAMPION
from shipyard.steps.alias import clear_alias, move_alias


class RegistryAliases:
    def __init__(self, registry: Any, pipeline_run_id: str | None = None):
        self.registry = registry
        self.pipeline_run_id = pipeline_run_id

    def champion(self, name: str) -> int | None:
        return (self.registry.aliases(name) or {}).get(CHAMPION)

    def set_canary(self, name: str, version: int, reason: str) -> None:
        move_alias(self.registry, name, CANARY, version, reason=reason,
                   pipeline_run_id=self.pipeline_run_id, by_rollout=True)

    def clear_canary(self, name: str, reason: str, gates: dict[str, Any]) -> None:
        clear_alias(self.registry, name, CANARY, reason=reason,
                    pipeline_run_id=self.pipeline_run_id, gates=gates)

    def move_champion(self, name: str, version: int, reason: str,
                      gates: dict[str, Any]) -> None:
        move_alias(self.registry, name, CHAMPION, version, reason=reason,
                   pipeline_run_id=self.pipeline_run_id, by_rollout=True, gates=gates)
