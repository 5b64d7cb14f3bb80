"""`shipyard export` and `shipyard register`: a model in, a verified TF Serving version out."""

from __future__ import annotations

from pathlib import Path

import click

from shipyard.cli.options import (
    import_option,
    injected,
    json_option,
    model_arguments,
    notifier,
    notify_option,
    registry_options,
    sign_options,
)
from shipyard.cli.output import (
    describe_export,
    describe_register,
    emit,
    library_prints_to_stderr,
    progress,
    quiet,
)


@click.command("export")
@model_arguments
@click.option("--version", "version", type=int, default=None,
              help="Version number N (default: 1 + the highest existing version).")
@import_option()
@click.option("--unsafe", is_flag=True,
              help="Load .keras files with safe_mode off (allows Lambda layers).")
@click.option("--allow-breaking", is_flag=True,
              help="Publish even if signatures break clients of the latest version.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where the export runs (e.g. /GPU:0, /TPU:0); verification is CPU-only.")
@sign_options
@json_option()
def export_command(model: Path, spec_path: Path, repo: str, name: str,
                   examples: str | None, examples_limit: int, warmup_from_examples: bool,
                   serving_runtime: str | None, version: int | None,
                   imports: tuple[str, ...], unsafe: bool, allow_breaking: bool,
                   device: str | None, sign_key: str | None, sign_cert: str | None,
                   sign_chain: tuple[str, ...], as_json: bool) -> None:
    """Export MODEL (.keras file or SavedModel directory) as a verified TF Serving version.

    Writes REPO/NAME/N atomically: the SavedModel is written under a staging name, verified in a
    fresh CPU-only process against the original model and on the TF Serving image's TensorFlow
    (--serving-runtime), then signed (with --sign-key or $SHIPYARD_SIGNING_KEY), and only then
    renamed to N.

    Exit codes: 0 ok, 2 bad spec/arguments/name, 3 version exists, 4 verification failed,
    5 breaking signature change, 1 anything else.
    """
    from shipyard.core.names import validate_model_name
    from shipyard.core.spec import load_spec
    from shipyard.signing.keys import signing_key
    from shipyard.steps.export import ExportRequest, export_model

    validate_model_name(name)
    spec = load_spec(spec_path)
    request = ExportRequest(model=model, spec=spec, repo=repo, name=name, version=version,
                            imports=imports, unsafe=unsafe, allow_breaking=allow_breaking,
                            device=device, serving_runtime=serving_runtime,
                            examples=examples, examples_limit=examples_limit,
                            warmup_from_examples=warmup_from_examples,
                            sign=signing_key(sign_key, sign_cert, sign_chain))
    result = export_model(request, progress=progress(quiet()),
                          **injected(launch_verifier="launch_verifier"))
    emit(result.to_json(), as_json, describe_export(result.to_json()))


@click.command("register")
@model_arguments
@registry_options
@click.option("--pipeline-run-id", default=None, help="Recorded on the run, version and alias.")
@import_option()
@click.option("--wait-timeout", "wait_timeout_s", type=click.FloatRange(min=0), default=600.0,
              show_default=True, metavar="SECONDS",
              help="How long to wait for a concurrent registration of the same content to "
                   "publish its version before publishing it from this run.")
@sign_options
@notify_option
@json_option()
def register_command(model: Path, spec_path: Path, repo: str, name: str,
                     examples: str | None, examples_limit: int, warmup_from_examples: bool,
                     serving_runtime: str | None, tracking_uri: str | None,
                     registry_uri: str | None,
                     pipeline_run_id: str | None, imports: tuple[str, ...],
                     wait_timeout_s: float, sign_key: str | None, sign_cert: str | None,
                     sign_chain: tuple[str, ...], notify: tuple[str, ...],
                     as_json: bool) -> None:
    """Export and verify MODEL, record it in MLflow as version N, publish REPO/NAME/N.

    The TF Serving version directory N is the MLflow registered model version N. Content that
    already has a version (same fingerprint) reuses it; registrations of one content running
    at once end with one version (see --wait-timeout). Alias `candidate` then points to N.

    Exit codes: as `shipyard export`, plus 6 when MLflow is unreachable (before the version
    is registered nothing is published). A registration that was killed or cut off at any
    point is completed by running the same command again (tags, run, `candidate` and its
    audit record).

    With --notify, once the command succeeded: io.shipyard.version.published (the result
    document) when this run published the version, then io.shipyard.alias.moved (the audit
    record) when it moved `candidate`.

    With --sign-key (or $SHIPYARD_SIGNING_KEY) the version is signed after verification and
    before it is published (N/assets.extra/model.sig).
    """
    from shipyard.core.names import validate_model_name
    from shipyard.core.spec import load_spec
    from shipyard.registry.client import RegistryLocation
    from shipyard.signing.keys import signing_key
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    validate_model_name(name)
    spec = load_spec(spec_path)
    request = ExportRequest(model=model, spec=spec, repo=repo, name=name, imports=imports,
                            serving_runtime=serving_runtime, examples=examples,
                            examples_limit=examples_limit,
                            warmup_from_examples=warmup_from_examples,
                            sign=signing_key(sign_key, sign_cert, sign_chain))
    with library_prints_to_stderr():
        result = register_model(request, RegistryLocation.resolve(tracking_uri, registry_uri),
                                pipeline_run_id=pipeline_run_id, progress=progress(quiet()),
                                wait_timeout_s=wait_timeout_s,
                                **injected(launch_verifier="launch_verifier"))
    doc = result.to_json()
    emit(doc, as_json, describe_register(doc))
    notifier(notify).emit_all(registered_events(doc, result.alias_move))


def registered_events(doc: dict, alias_move: dict | None) -> list[tuple[str, str, dict]]:
    """What a register (or a copy, in its destination) announces: the version, when this run
    published it (not when it reused it), then the alias move, when it made one."""
    from shipyard.notify import ALIAS_MOVED, VERSION_PUBLISHED

    events = [] if doc["reused"] else [(VERSION_PUBLISHED, doc["name"], doc)]
    if alias_move is not None:
        events.append((ALIAS_MOVED, doc["name"], alias_move))
    return events
