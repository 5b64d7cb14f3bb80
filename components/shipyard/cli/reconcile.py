"""`shipyard reconcile`: do the registry, the repository, models.config and TF Serving agree?"""

from __future__ import annotations

import json
from typing import Any

import click

from shipyard.cli.options import (
    json_option,
    registry_options,
    serving_repo_options,
    verify_key_option,
)
from shipyard.cli.output import emit, library_prints_to_stderr, progress, quiet


@click.command("reconcile")
@serving_repo_options
@registry_options
@click.option("--server", "servers", multiple=True, metavar="HOST:PORT",
              help="A TF Serving's gRPC address (port 8500 by default) whose available "
                   "versions are compared with models.config. Repeatable.")
@click.option("--fix", is_flag=True,
              help="Repair what is safe: labels follow the aliases (champion -> stable, "
                   "canary -> canary) as `shipyard push` moves them, and missing shipyard.* "
                   "tags are completed from the manifests; then compare again.")
@verify_key_option
@json_option("Print {name, in_sync, drift, fixed} as JSON on stdout.")
def reconcile_command(repo: str, name: str, tracking_uri: str | None, registry_uri: str | None,
                      servers: tuple[str, ...], fix: bool, verify_key: str | None,
                      as_json: bool) -> None:
    """Compare NAME in the registry, the repository, models.config and on TF Serving.

    Reports each disagreement as a drift item (kind, what each side says, whether --fix can
    repair it, and the fix): the registry's aliases and its versions' shipyard.* tags, the
    published version directories and their checksums, models.config's versions and labels,
    and the versions each --server reports AVAILABLE. --fix never deletes a directory, moves
    an alias or overwrites a tag; with one --server its label moves wait for that server.

    With a trust key (--verify-key or $SHIPYARD_VERIFY_KEY) each published version's
    signature is checked with model-signing's verifier: one that does not verify is a
    signature_failed item (never fixable), and --fix moves no label onto it.

    Exit codes: 0 everything agrees (after --fix: it repaired everything), 10 drift remains,
    2 bad arguments or a registry without NAME, 6 MLflow unreachable, 7 a server unreachable,
    or refused a --fix label move (the previous config is restored), 1 anything else.
    """
    from shipyard.core.errors import DriftError
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.repository import open_repository
    from shipyard.signing.keys import trust_key
    from shipyard.steps.reconcile import reconcile

    trust = trust_key(verify_key)
    with library_prints_to_stderr():
        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
        result = reconcile(open_repository(repo), name, registry, servers=servers, fix=fix,
                           progress=progress(quiet()), trust=trust)
    doc = result.to_json()
    emit(doc, as_json, describe_reconcile(doc))
    if not doc["in_sync"]:
        fixable = sum(item["fixable"] for item in doc["drift"])
        hint = (f", {fixable} of them fixable: run with --fix" if fixable and not fix else
                f", {fixable} of them still fixable: run --fix again once the servers have "
                "loaded the new versions" if fixable else "")
        raise DriftError(f"{name}: {len(doc['drift'])} drift item(s) remain{hint}",
                         document=doc)


def describe_reconcile(doc: dict[str, Any]) -> str:
    lines = []
    if doc["in_sync"]:
        lines.append(f"{doc['name']}: in sync")
    else:
        fixable = sum(item["fixable"] for item in doc["drift"])
        lines.append(f"{doc['name']}: {len(doc['drift'])} drift item(s), {fixable} fixable")
        lines += _items(doc["drift"])
    if doc["fixed"]:
        lines.append(f"fixed {len(doc['fixed'])}:")
        lines += [f"  {item['kind']} ({item['subject']})" for item in doc["fixed"]]
    return "\n".join(lines)


def _items(items: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in items:
        lines.append(f"- {item['kind']} ({item['subject']})"
                     + (" [fixable]" if item["fixable"] else ""))
        lines += [f"    {side}: {json.dumps(said, sort_keys=True)}"
                  for side, said in item["says"].items()]
        lines.append(f"    fix: {item['fix']}")
    return lines
