"""`shipyard push`, `status` and `gc`: what TF Serving loads from a model repository."""

from __future__ import annotations

from typing import Any

import click

from shipyard.cli.options import (
    json_option,
    notifier,
    notify_option,
    registry_aliases,
    registry_options,
    serving_address_option,
    serving_repo_options,
    verify_key_option,
)
from shipyard.cli.output import describe_gc, describe_push, describe_status, emit, progress, quiet
from shipyard.core.vocabulary import LABELS


@click.command("push")
@serving_repo_options
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@click.option("--label", type=click.Choice(LABELS), required=True,
              help="The version label to point at N.")
@serving_address_option
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds the whole push may wait for the server (reloads and loading).")
@verify_key_option
@notify_option
@json_option()
def push_command(repo: str, name: str, version: int, label: str, serving_address: str | None,
                 timeout_s: float, verify_key: str | None, notify: tuple[str, ...],
                 as_json: bool) -> None:
    """Point LABEL of NAME at published version N in REPO/models.config.

    A label in use moves in two steps, as TF Serving requires: first N is loaded next to the
    old version, then the label moves, then versions no label needs are unloaded. With
    --serving-address each step is sent to the server (HandleReloadConfigRequest) and the push
    waits until the versions are AVAILABLE. One push or gc per model at a time.

    With a trust key (--verify-key or $SHIPYARD_VERIFY_KEY), N's signature
    (N/assets.extra/model.sig) must verify with it, checked by model-signing before
    models.config is touched; an object store's version is downloaded for the check.

    Exit codes: 0 ok, 2 N is not published or fails its checksums, 4 N's signature does not
    verify with the trust key (a file changed or added, no signature, another key; nothing is
    changed), 7 the server refused, failed or timed out (the previous config is restored,
    file and server), 1 anything else.

    With --notify, a push that changed NAME's labels sends io.shipyard.serving.labels_changed
    (the result document) once the config is written (and, with a server, taken).
    """
    from shipyard.repository import open_repository
    from shipyard.signing.keys import trust_key
    from shipyard.steps.push import push_version

    trust = trust_key(verify_key)  # a bad key file: exit 2 before anything is read
    result = push_version(open_repository(repo), name, version, label,
                          serving_address=serving_address, timeout_s=timeout_s,
                          progress=progress(quiet()), trust=trust)
    doc = result.to_json()
    emit(doc, as_json, describe_push(doc, name, version, label, serving_address))
    if (doc["before"] or {}).get("labels", {}) != doc["after"]["labels"]:
        from shipyard.notify import SERVING_LABELS_CHANGED

        notifier(notify).emit(SERVING_LABELS_CHANGED, name, doc)


@click.command("status")
@serving_repo_options
@serving_address_option
@registry_options
@json_option("Print the status as JSON on stdout.")
def status_command(repo: str, name: str, serving_address: str | None, tracking_uri: str | None,
                   registry_uri: str | None, as_json: bool) -> None:
    """NAME's versions on disk (with sizes), labels, registry aliases and server states.

    What cannot be read (registry or server down) is reported and the rest still shown; the
    exit code is then that error's (6 registry, 7 server).
    """
    from shipyard.repository import open_repository
    from shipyard.steps.status import model_status

    read_server = None
    if serving_address is not None:
        from shipyard.serving.client import ServingClient

        def read_server(model: str) -> dict[int, dict[str, Any]]:
            with ServingClient(serving_address) as client:
                return client.version_states(model)

    doc = model_status(open_repository(repo), name,
                       read_aliases=registry_aliases(tracking_uri, registry_uri),
                       read_server=read_server).to_json()
    emit(doc, as_json, describe_status(doc))
    if doc["errors"]:
        click.get_current_context().exit(doc["errors"][0]["exit_code"])


@click.command("gc")
@serving_repo_options
@click.option("--keep", "keep", type=int, required=True,
              help="Keep the newest K versions whatever points to them.")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@registry_options
@click.option("--no-registry", is_flag=True,
              help="NAME is registered nowhere: protect versions by labels and --keep only.")
@json_option()
def gc_command(repo: str, name: str, keep: int, dry_run: bool, tracking_uri: str | None,
               registry_uri: str | None, no_registry: bool, as_json: bool) -> None:
    """Remove version directories of NAME that nothing needs.

    Kept: the newest K, versions a label points to or models.config loads, and versions a
    registry alias (candidate, canary, champion, ...) points to. The registry is read first;
    if it cannot be, nothing is removed (exit 6); if it has no model NAME, nothing is removed
    either (exit 2: point it at the right registry, or pass --no-registry).
    """
    from shipyard.repository import open_repository
    from shipyard.steps.gc import collect_garbage

    doc = collect_garbage(open_repository(repo), name, keep,
                          read_aliases=(None if no_registry
                                        else registry_aliases(tracking_uri, registry_uri)),
                          dry_run=dry_run, progress=progress(quiet())).to_json()
    emit(doc, as_json, describe_gc(doc, name, dry_run))
