"""Moving an alias, always with its audit record. Nothing else in shipyard moves an alias.

A move and its record are one unit even when the process is killed halfway: the record is
written first as an intent (pending), then the alias moves, then the record is rewritten
settled. An intent left behind by a killed process is settled by the next move or history
read of that model (`settle_pending`): kept when the alias points where it says (the move
happened), deleted otherwise (it did not). See shipyard.core.audit for the trail's form.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shipyard.core.audit import (
    AliasMove,
    check_move,
    history,
    last_recorded_target,
    log_tag,
    pending_records,
    record_value,
)
from shipyard.core.errors import UsageError
from shipyard.core.names import validate_version
from shipyard.registry.client import ModelRegistry, current_user


def move_alias(registry: ModelRegistry, name: str, alias: str, version: int, *, reason: str,
               pipeline_run_id: str | None = None, force: bool = False,
               by_rollout: bool = False, gates: dict[str, Any] | None = None) -> AliasMove:
    """Points `alias` of registered model `name` at `version` and records the move."""
    validate_version(version)  # before the registry is asked anything
    if not reason.strip():
        raise UsageError("reason: say why the alias moves (it goes into the audit trail)",
                         param="reason")
    model = registry.registered_model(name)
    target = registry.version(name, version)
    check_move(alias, version_tags=dict(target.tags), force=force, by_rollout=by_rollout)
    aliases, _ = settle_pending(registry, name, model)
    return _record_move(registry, name, alias, aliases.get(alias), version, reason,
                        pipeline_run_id, gates)


def clear_alias(registry: ModelRegistry, name: str, alias: str, *, reason: str,
                pipeline_run_id: str | None = None,
                gates: dict[str, Any] | None = None) -> AliasMove | None:
    """Removes `alias` of NAME (e.g. canary after a rollout) and records it; None when the
    alias was not set (nothing moved, nothing recorded)."""
    aliases, _ = settle_pending(registry, name, registry.registered_model(name))
    previous = aliases.get(alias)
    if previous is None:
        return None
    return _record_move(registry, name, alias, previous, None, reason, pipeline_run_id, gates)


def point_alias(registry: ModelRegistry, name: str, model: Any, alias: str, version: int,
                version_tags: dict[str, str], *, reason: str,
                pipeline_run_id: str | None = None) -> tuple[dict[str, int], AliasMove | None]:
    """Makes `alias` point at `version` with its record, doing only what is missing: the
    completion step of `shipyard register`, safe to repeat. `model` and `version_tags` are
    what the caller already read (no second read). Returns the aliases afterwards, and the
    move when this call moved the alias (None when it was there already: a record written
    afterwards moves nothing).

    Besides moving the alias when it points elsewhere, it records a move the trail lacks: an
    alias already at `version` whose latest record says otherwise was moved without its
    record (by a shipyard before intents were written first, or outside shipyard)."""
    aliases, tags = settle_pending(registry, name, model)
    if aliases.get(alias) != version:
        check_move(alias, version_tags=version_tags, force=False, by_rollout=False)
        move = _record_move(registry, name, alias, aliases.get(alias), version, reason,
                            pipeline_run_id, None)
        return {**aliases, alias: version}, move
    found, recorded = last_recorded_target(tags, alias)
    if not found or recorded != version:
        move = _new_move(alias, recorded, version,
                         f"recorded afterwards: {alias} was found at {version} without a "
                         f"record of that move ({reason})", pipeline_run_id, None)
        key, value = log_tag(move)
        registry.append_log(name, key, value)  # nothing moves: the record alone is the fix
    return aliases, None


def settle_pending(registry: ModelRegistry, name: str,
                   model: Any) -> tuple[dict[str, int], dict[str, str]]:
    """Settles the intents a killed move left on `model` (see the module doc). Returns the
    model's aliases and tags as they are afterwards."""
    aliases = {a: int(v) for a, v in model.aliases.items()}
    tags = dict(model.tags)
    for key, record in pending_records(tags):
        if aliases.get(record["alias"]) == record["to"]:
            tags[key] = record_value(record)
            registry.append_log(name, key, tags[key])
        else:
            registry.delete_log(name, key)
            del tags[key]
    return aliases, tags


def _new_move(alias: str, previous: int | None, version: int | None, reason: str,
              pipeline_run_id: str | None, gates: dict[str, Any] | None) -> AliasMove:
    return AliasMove(
        alias=alias, from_version=previous, to_version=version,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        user=current_user(), reason=reason, pipeline_run_id=pipeline_run_id, gates=gates or {})


def _record_move(registry: ModelRegistry, name: str, alias: str, previous: int | None,
                 version: int | None, reason: str, pipeline_run_id: str | None,
                 gates: dict[str, Any] | None) -> AliasMove:
    """Intent, move, settled record: a kill or lost request between any two leaves a state
    settle_pending resolves (no rollback needed, so none is attempted)."""
    move = _new_move(alias, previous, version, reason, pipeline_run_id, gates)
    key, value = log_tag(move)
    registry.append_log(name, key, record_value(move.to_json(), pending=True))
    registry.set_alias(name, alias, version)
    registry.append_log(name, key, value)
    return move


def alias_history(registry: ModelRegistry, name: str) -> list[dict[str, Any]]:
    """Every move, oldest first; intents of killed moves are settled first, so a move that
    happened is listed and one that did not is not."""
    _, tags = settle_pending(registry, name, registry.registered_model(name))
    return history(tags)
