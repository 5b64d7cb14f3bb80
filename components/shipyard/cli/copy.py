"""`shipyard copy`: a verified version from one environment into another, byte for byte."""

from __future__ import annotations

import click

from shipyard.cli.export import registered_events
from shipyard.cli.options import (
    checked_repo,
    checked_runtime,
    injected,
    json_option,
    notifier,
    notify_option,
    sign_options,
    verify_key_option,
)
from shipyard.cli.output import emit, library_prints_to_stderr, progress, quiet


def describe_copy(doc: dict) -> str:
    source = doc["copied_from"]
    verb = "Reused" if doc["reused"] else "Copied and published"
    return (f"{verb} {source['name']} version {source['version']} ({source['registry']}) as "
            f"{doc['name']} version {doc['version']} at {doc['path']}\n"
            f"  files: {doc['transfer']}, checksums verified; fingerprint "
            f"{doc['fingerprint']}\n"
            f"  proven: " + ", ".join(
                f"{what} ({figures.get('tensorflow', figures.get('status'))})"
                for what, figures in doc["proof"].items()) + "\n"
            f"  run: {doc['run_id']}\n  aliases: {doc['aliases']}\n"
            f"  signed: " + (f"{signing['method']} {signing['key_fingerprint']}"
                             if (signing := doc.get("signing")) else "no"))


@click.command("copy")
@click.argument("name")
@click.option("--version", "version", type=int, default=None,
              help="The source version N (or --alias).")
@click.option("--alias", "aliases", multiple=True, metavar="ALIAS",
              help="Without --version: the source version by its alias in the source "
                   "registry (e.g. champion); a second --alias (or the only one, with "
                   "--version) is the destination's alias (default candidate).")
@click.option("--from-repo", required=True, callback=checked_repo,
              help="The source model repository (path or fsspec URL).")
@click.option("--to-repo", required=True, callback=checked_repo,
              help="The destination model repository (path or fsspec URL).")
@click.option("--from-tracking-uri", default=None,
              help="The source MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the "
                   "embedded store).")
@click.option("--from-registry-uri", default=None,
              help="The source MLflow registry URI (default: the source tracking URI).")
@click.option("--to-tracking-uri", default=None, help="The destination MLflow tracking URI.")
@click.option("--to-registry-uri", default=None,
              help="The destination MLflow registry URI (default: the destination tracking "
                   "URI).")
@click.option("--to-name", default=None, help="The model's name in the destination (default: "
                                              "NAME).")
@click.option("--to-alias", "to_alias", default=None,
              help="The destination's alias pointed at the copy, named apart from --alias "
                   "(default candidate).")
@click.option("--reason", default=None, help="Recorded with the destination's alias move.")
@click.option("--pipeline-run-id", default=None, help="Recorded on the run, version and alias.")
@click.option("--serving-runtime", default=None, metavar="VERSION", callback=checked_runtime,
              help="Also prove the copy on this TensorFlow, the destination's TF Serving's "
                   "(as for export); 'none' skips that part of the proof.")
@click.option("--allow-breaking", is_flag=True,
              help="Publish even if the signatures break the destination's latest version.")
@verify_key_option
@sign_options
@notify_option
@json_option()
def copy_command(name: str, version: int | None, aliases: tuple[str, ...], from_repo: str,
                 to_repo: str, from_tracking_uri: str | None, from_registry_uri: str | None,
                 to_tracking_uri: str | None, to_registry_uri: str | None,
                 to_name: str | None, to_alias: str | None, reason: str | None,
                 pipeline_run_id: str | None, serving_runtime: str | None,
                 allow_breaking: bool, verify_key: str | None, sign_key: str | None,
                 sign_cert: str | None, sign_chain: tuple[str, ...], notify: tuple[str, ...],
                 as_json: bool) -> None:
    """Copy a published version of NAME from one environment to another, byte for byte.

    The source (--version N, or --alias through the source registry) must be published and
    match its manifest's checksums. Its files are hard-linked (one file system), downloaded or
    copied into the destination repository under the number the destination's MLflow gives
    it, checked against the checksums again, and proven in fresh CPU-only processes: the copy
    answers its warmup requests like the source version. The destination's MLflow gets a run
    with the source run's params and metrics, the version with `shipyard.copied_from` (the
    lineage), and the alias (candidate by default) through the audited path. The source is
    never changed.

    Signatures: with a trust key (--verify-key or $SHIPYARD_VERIFY_KEY) the SOURCE version's
    signature must verify with it before anything is copied (an object store's version is
    downloaded for the check). With --sign-key (or $SHIPYARD_SIGNING_KEY) the copy is signed
    with the destination's key after its proof and before it is published: its manifest's
    `signing` record and assets.extra/model.sig are the destination's own, every other file
    is the source's. Without a signing key the copy keeps the source's signature, if any.
    A reused destination version keeps the signature it was published with.

    Exit codes: as `shipyard register` (6: an MLflow unreachable); 4 when the source or the
    copy fails its checksums or its proof, or the source's signature does not verify with
    the trust key (nothing is copied). Running the same command again completes a copy
    that was killed; content the destination has already is reused.

    With --notify, once the copy succeeded: io.shipyard.version.published (the result
    document, lineage included) when the destination's version was published by this run,
    then io.shipyard.alias.moved (the audit record) when the destination's alias moved.
    """
    from shipyard.registry.client import RegistryLocation
    from shipyard.signing.keys import signing_key, trust_key
    from shipyard.steps.copy import CopyRequest, copy_version

    source_alias, move_alias = split_aliases(version, aliases, to_alias)
    request = CopyRequest(
        name=name, from_repo=from_repo, to_repo=to_repo, version=version, alias=source_alias,
        source=RegistryLocation.resolve(from_tracking_uri, from_registry_uri),
        destination=RegistryLocation.resolve(to_tracking_uri, to_registry_uri),
        to_name=to_name, move_alias=move_alias, reason=reason,
        pipeline_run_id=pipeline_run_id, serving_runtime=serving_runtime,
        allow_breaking=allow_breaking, trust=trust_key(verify_key),
        sign=signing_key(sign_key, sign_cert, sign_chain))
    with library_prints_to_stderr():
        result = copy_version(request, progress=progress(quiet()),
                              **injected(start_check="start_check"))
    doc = result.to_json()
    emit(doc, as_json, describe_copy(doc))
    notifier(notify).emit_all(registered_events(doc, result.registered.alias_move))


def split_aliases(version: int | None, aliases: tuple[str, ...],
                  to_alias: str | None) -> tuple[str | None, str]:
    """(the source's alias, the destination's) from the command line, as the synopsis reads:
    `shipyard copy NAME (--version N | --alias ALIAS) ... [--alias candidate]`. With
    --version every --alias is the destination's; without it, the first names the source
    version and a second the destination's. `--to-alias` names the destination's apart."""
    from shipyard.core.errors import UsageError
    from shipyard.core.vocabulary import CANDIDATE

    source = None if version is not None or not aliases else aliases[0]
    destination = list(aliases if version is not None else aliases[1:])
    if to_alias is not None:
        destination.append(to_alias)
    if len(set(destination)) > 1 or len(destination) > 2:
        raise UsageError(f"alias: the destination's alias is given more than once "
                         f"({', '.join(destination)}); give it once, as the second --alias or "
                         "as --to-alias", param="alias")
    return source, destination[0] if destination else CANDIDATE
