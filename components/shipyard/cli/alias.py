"""`shipyard alias set|history`: registry aliases moved, and read back, with an audit trail."""

from __future__ import annotations

import click

from shipyard.cli.options import json_option, notifier, notify_option, registry_options
from shipyard.cli.output import (
    describe_alias_history,
    describe_alias_move,
    emit,
    library_prints_to_stderr,
)
from shipyard.core.names import MAX_VERSION


@click.group("alias")
def alias_group() -> None:
    """Move registry aliases (candidate, canary, champion, ...) with an audit trail."""


@alias_group.command("set")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=click.IntRange(1, MAX_VERSION))  # checked before MLflow
@click.option("--reason", required=True, help="Why the alias moves (recorded).")
@click.option("--pipeline-run-id", default=None, help="Recorded with the move.")
@click.option("--force", is_flag=True, help="Allow moving 'champion' outside a rollout.")
@registry_options
@notify_option
@json_option("Print the recorded move as JSON.")
def alias_set_command(name: str, alias: str, version: int, reason: str,
                      pipeline_run_id: str | None, force: bool, tracking_uri: str | None,
                      registry_uri: str | None, notify: tuple[str, ...],
                      as_json: bool) -> None:
    """Point ALIAS of registered model NAME at VERSION, and record the move.

    The version must be published; 'champion' moves only through a rollout or with --force.
    With --notify, the move's audit record is sent as io.shipyard.alias.moved once it is
    recorded.
    """
    from shipyard.notify import ALIAS_MOVED
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import move_alias

    with library_prints_to_stderr():
        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
        move = move_alias(registry, name, alias, version, reason=reason,
                          pipeline_run_id=pipeline_run_id, force=force)
    doc = move.to_json()
    emit(doc, as_json, describe_alias_move(doc, name, alias))
    notifier(notify).emit(ALIAS_MOVED, name, doc)


@alias_group.command("history")
@click.argument("name")
@registry_options
@json_option("Print the moves as a JSON list.")
def alias_history_command(name: str, tracking_uri: str | None, registry_uri: str | None,
                          as_json: bool) -> None:
    """Every recorded alias move of registered model NAME, oldest first."""
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import alias_history

    with library_prints_to_stderr():
        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
        moves = alias_history(registry, name)
    if as_json or moves:  # no moves: no line at all, not an empty one
        emit(moves, as_json, describe_alias_history(moves))
