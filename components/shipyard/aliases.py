"""Moving an alias, always with its audit record. Nothing else in shipyard moves an alias."""

from __future__ import annotations

import datetime as dt
from typing import Any

from shipyard.errors import UsageError
from shipyard.registry.audit import AliasMove, check_move, history, log_tag
from shipyard.registry.client import ModelRegistry, current_user


def move_alias(registry: ModelRegistry, name: str, alias: str, version: int, *, reason: str,
               pipeline_run_id: str | None = None, force: bool = False,
               by_rollout: bool = False, gates: dict[str, Any] | None = None) -> AliasMove:
    """Points `alias` of registered model `name` at `version` and records the move.

    The alias is moved first and the record appended second; if the record cannot be written,
    the alias is put back, so no move exists without its record.
    """
    if not reason.strip():
        raise UsageError("--reason: say why the alias moves (it goes into the audit trail)")
    model = registry.registered_model(name)
    target = registry.version(name, version)
    check_move(alias, version_tags=dict(target.tags), force=force, by_rollout=by_rollout)
    previous = model.aliases.get(alias)
    return _record_move(registry, name, alias, int(previous) if previous is not None else None,
                        version, reason, pipeline_run_id, gates)


def clear_alias(registry: ModelRegistry, name: str, alias: str, *, reason: str,
                pipeline_run_id: str | None = None,
                gates: dict[str, Any] | None = None) -> AliasMove | None:
    """Removes `alias` of NAME (e.g. canary after a rollout) and records it; None when the
    alias was not set (nothing moved, nothing recorded)."""
    previous = registry.registered_model(name).aliases.get(alias)
    if previous is None:
        return None
    return _record_move(registry, name, alias, int(previous), None, reason, pipeline_run_id,
                        gates)


def _record_move(registry: ModelRegistry, name: str, alias: str, previous: int | None,
                 version: int | None, reason: str, pipeline_run_id: str | None,
                 gates: dict[str, Any] | None) -> AliasMove:
    """Moves the alias first and appends the record second; if the record cannot be
    written, the alias is put back, so no move exists without its record."""
    move = AliasMove(
        alias=alias, from_version=previous, to_version=version,
        time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        user=current_user(), reason=reason, pipeline_run_id=pipeline_run_id, gates=gates or {})
    registry.set_alias(name, alias, version)
    key, value = log_tag(move)
    try:
        registry.append_log(name, key, value)
    except BaseException:
        registry.set_alias(name, alias, previous)
        raise
    return move


def alias_history(registry: ModelRegistry, name: str) -> list[dict[str, Any]]:
    return history(dict(registry.registered_model(name).tags))
