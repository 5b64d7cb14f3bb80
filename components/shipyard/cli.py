"""`shipyard` command line. Thin: parses arguments, calls shipyard.steps.export, prints results.

Human output by default; `--json` prints the result document alone on stdout while progress and
logs go to stderr. Errors exit with the code of their ShipyardError subclass. Nothing here
imports TensorFlow at start-up, so `--help` and spec errors answer at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from shipyard import __version__
from shipyard.core.errors import ShipyardError

log = logging.getLogger("shipyard")


class _ShipyardGroup(click.Group):
    """Maps ShipyardError to its exit code with a one-paragraph message on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShipyardError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=_ShipyardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shipyard")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors and the result.")
def main(quiet: bool) -> None:
    """Export, verify, register and roll out TensorFlow/Keras models to TF Serving."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    # TensorFlow's C++ start-up chatter hides our own messages; users can still override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _progress(quiet: bool = False) -> Any:
    from shipyard.core.progress import LogProgress, NullProgress, RichProgress

    if quiet:
        return NullProgress()
    if sys.stderr.isatty():
        from rich.console import Console

        return RichProgress(Console(stderr=True))
    return LogProgress()


def _injected() -> dict[str, Any]:
    """Collaborators a caller passed through click's context object (tests pass a verifier
    launcher that keeps a warm verifier ready); empty for a normal run."""
    obj = click.get_current_context().obj or {}
    return {k: v for k, v in obj.items() if k == "launch_verifier"}


def _library_prints_to_stderr() -> Any:
    """MLflow and the KFP client print to stdout (e.g. "View run ... at ..."); stdout belongs
    to our result."""
    return contextlib.redirect_stdout(sys.stderr)


def _emit(document: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        click.echo(human)


def _quiet() -> bool:
    return logging.getLogger().level > logging.INFO


def _checked_runtime(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """--serving-runtime is checked while the arguments are read, before anything starts."""
    from shipyard.exporter.runtime import choose_runtime

    if value is not None:
        choose_runtime(value)  # raises UsageError (exit 2) naming the flag and the fix
    return value


def _model_arguments(command: Any) -> Any:
    """MODEL --spec --repo --name: what `export` and `register` both take first."""
    for decorate in reversed([
        click.argument("model", type=click.Path(path_type=Path)),
        click.option("--spec", "spec_path", required=True, type=click.Path(path_type=Path),
                     help="Export spec YAML: endpoints, variable collections, tolerance."),
        click.option("--repo", required=True,
                     help="Model repository: a path or an fsspec URL (gs://, s3://); the "
                          "version is written to REPO/NAME/N."),
        click.option("--name", required=True,
                     help="Model name (a DNS-1123 label); also the registered model's name."),
        click.option("--examples", default=None, metavar="PATH",
                     help="Real serialized tf.Examples (TFRecord file, glob or directory such "
                          "as ExampleGen's Split-eval/; any fsspec URL) that tf_example "
                          "endpoints are also verified on."),
        click.option("--examples-limit", default=16, show_default=True, metavar="K",
                     help="Read at most K examples from --examples."),
        click.option("--warmup-from-examples", is_flag=True,
                     help="Also write the real examples into the warmup file (off by default: "
                          "they may hold personal data)."),
        click.option("--serving-runtime", default=None, metavar="VERSION",
                     callback=_checked_runtime,
                     help="Also verify on this TensorFlow, the one TF Serving's image runs "
                          "(e.g. 2.19; default: $SHIPYARD_SERVING_RUNTIME, else the TensorFlow "
                          "of the image shipyard's manifests render); 'none' skips the check."),
    ]):
        command = decorate(command)
    return command


@main.command("export")
@_model_arguments
@click.option("--version", "version", type=int, default=None,
              help="Version number N (default: 1 + the highest existing version).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first (registers custom Keras objects). Repeatable.")
@click.option("--unsafe", is_flag=True,
              help="Load .keras files with safe_mode off (allows Lambda layers).")
@click.option("--allow-breaking", is_flag=True,
              help="Publish even if signatures break clients of the latest version.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where the export runs (e.g. /GPU:0, /TPU:0); verification is CPU-only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def export_command(model: Path, spec_path: Path, repo: str, name: str,
                   examples: str | None, examples_limit: int, warmup_from_examples: bool,
                   serving_runtime: str | None, version: int | None,
                   imports: tuple[str, ...], unsafe: bool, allow_breaking: bool,
                   device: str | None, as_json: bool) -> None:
    """Export MODEL (.keras file or SavedModel directory) as a verified TF Serving version.

    Writes REPO/NAME/N atomically: the SavedModel is written under a staging name, verified in a
    fresh CPU-only process against the original model and on the TF Serving image's TensorFlow
    (--serving-runtime), and only then renamed to N.

    Exit codes: 0 ok, 2 bad spec/arguments/name, 3 version exists, 4 verification failed,
    5 breaking signature change, 1 anything else.
    """
    from shipyard.core.names import validate_model_name
    from shipyard.core.spec import load_spec
    from shipyard.steps.export import ExportRequest, export_model

    validate_model_name(name)
    spec = load_spec(spec_path)
    request = ExportRequest(model=model, spec=spec, repo=repo, name=name, version=version,
                            imports=imports, unsafe=unsafe, allow_breaking=allow_breaking,
                            device=device, serving_runtime=serving_runtime,
                            examples=examples, examples_limit=examples_limit,
                            warmup_from_examples=warmup_from_examples)
    result = export_model(request, progress=_progress(_quiet()), **_injected())
    _emit(result.to_json(), as_json, _describe_export(result.to_json()))


def _describe_export(doc: dict[str, Any]) -> str:
    parity = ", ".join(f"{k} (max abs error {v:.2g})" for k, v in doc["parity"].items())
    collections = ", ".join(f"{k} ({v} variables)" for k, v in doc["variable_collections"].items())
    return (f"Published {doc['name']} version {doc['version']} at {doc['path']}\n"
            f"  fingerprint: {doc['fingerprint']}\n"
            f"  endpoints: {parity}\n"
            f"  variable collections: {collections or 'none'}")


def _registry_options(command: Any) -> Any:
    """--tracking-uri / --registry-uri, shared by every command that talks to MLflow."""
    command = click.option("--registry-uri", default=None,
                           help="MLflow registry URI (default: MLFLOW_REGISTRY_URI, else the "
                                "tracking URI).")(command)
    return click.option("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else an "
                             "embedded SQLite store under ./.shipyard/).")(command)


@main.command("register")
@_model_arguments
@_registry_options
@click.option("--pipeline-run-id", default=None, help="Recorded on the run, version and alias.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first (registers custom Keras objects). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def register_command(model: Path, spec_path: Path, repo: str, name: str,
                     examples: str | None, examples_limit: int, warmup_from_examples: bool,
                     serving_runtime: str | None, tracking_uri: str | None,
                     registry_uri: str | None,
                     pipeline_run_id: str | None, imports: tuple[str, ...],
                     as_json: bool) -> None:
    """Export and verify MODEL, record it in MLflow as version N, publish REPO/NAME/N.

    The TF Serving version directory N is the MLflow registered model version N. Content that
    already has a version (same fingerprint) reuses it. Alias `candidate` then points to N.

    Exit codes: as `shipyard export`, plus 6 when MLflow is unreachable (before the version
    is registered nothing is published). A registration that was killed or cut off at any
    point is completed by running the same command again (tags, run, `candidate` and its
    audit record).
    """
    from shipyard.core.names import validate_model_name
    from shipyard.core.spec import load_spec
    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    validate_model_name(name)
    spec = load_spec(spec_path)
    request = ExportRequest(model=model, spec=spec, repo=repo, name=name, imports=imports,
                            serving_runtime=serving_runtime, examples=examples,
                            examples_limit=examples_limit,
                            warmup_from_examples=warmup_from_examples)
    with _library_prints_to_stderr():
        result = register_model(request, RegistryLocation.resolve(tracking_uri, registry_uri),
                                pipeline_run_id=pipeline_run_id, progress=_progress(_quiet()),
                                **_injected())
    doc = result.to_json()
    verb = "Reused" if doc["reused"] else "Registered and published"
    _emit(doc, as_json, f"{verb} {doc['name']} version {doc['version']} at {doc['path']}\n"
                        f"  run: {doc['run_id']}\n  fingerprint: {doc['fingerprint']}\n"
                        f"  aliases: {doc['aliases']}")


@main.group("alias")
def alias_group() -> None:
    """Move registry aliases (candidate, canary, champion, ...) with an audit trail."""


@alias_group.command("set")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--reason", required=True, help="Why the alias moves (recorded).")
@click.option("--pipeline-run-id", default=None, help="Recorded with the move.")
@click.option("--force", is_flag=True, help="Allow moving 'champion' outside a rollout.")
@_registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the recorded move as JSON.")
def alias_set_command(name: str, alias: str, version: int, reason: str,
                      pipeline_run_id: str | None, force: bool, tracking_uri: str | None,
                      registry_uri: str | None, as_json: bool) -> None:
    """Point ALIAS of registered model NAME at VERSION, and record the move.

    The version must be published; 'champion' moves only through a rollout or with --force.
    """
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import move_alias

    with _library_prints_to_stderr():
        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
        move = move_alias(registry, name, alias, version, reason=reason,
                          pipeline_run_id=pipeline_run_id, force=force)
    doc = move.to_json()
    _emit(doc, as_json, f"{name}: {alias} {doc['from'] or '(unset)'} -> {doc['to']}")


@alias_group.command("history")
@click.argument("name")
@_registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the moves as a JSON list.")
def alias_history_command(name: str, tracking_uri: str | None, registry_uri: str | None,
                          as_json: bool) -> None:
    """Every recorded alias move of registered model NAME, oldest first."""
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import alias_history

    with _library_prints_to_stderr():
        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
        moves = alias_history(registry, name)
    if as_json:
        click.echo(json.dumps(moves, indent=2, sort_keys=True))
        return
    for m in moves:
        target = m["to"] if m["to"] is not None else "(cleared)"
        click.echo(f"{m['time']}  {m['alias']:<10} {m['from'] or '-'} -> {target}  "
                   f"by {m['user']}"
                   + (f" (run {m['pipeline_run_id']})" if m.get("pipeline_run_id") else "")
                   + f": {m['reason']}")


def _serving_repo_options(command: Any) -> Any:
    """--repo --name: the model repository and model that push, status and gc act on."""
    command = click.option("--name", required=True, help="Model name.")(command)
    return click.option("--repo", required=True,
                        help="Model repository (path or fsspec URL) holding NAME and "
                             "models.config.")(command)


def _serving_address_option(command: Any) -> Any:
    return click.option("--serving-address", default=None, metavar="HOST:PORT",
                        help="TF Serving's gRPC address (port 8500 by default).")(command)


def _registry_aliases(tracking_uri: str | None, registry_uri: str | None) -> Any:
    """Reads a model's registry aliases; MLflow is imported only when it is called."""
    def read(name: str) -> dict[str, int] | None:
        from shipyard.registry.client import ModelRegistry, RegistryLocation

        with _library_prints_to_stderr():
            return ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri)
                                 ).aliases(name)
    return read


@main.command("push")
@_serving_repo_options
@click.option("--version", "version", type=int, required=True, help="Published version N.")
# The choices are serving.config.LABELS, written out so that --help imports no protos.
@click.option("--label", type=click.Choice(["stable", "canary"]), required=True,
              help="The version label to point at N.")
@_serving_address_option
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds the whole push may wait for the server (reloads and loading).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def push_command(repo: str, name: str, version: int, label: str, serving_address: str | None,
                 timeout_s: float, as_json: bool) -> None:
    """Point LABEL of NAME at published version N in REPO/models.config.

    A label in use moves in two steps, as TF Serving requires: first N is loaded next to the
    old version, then the label moves, then versions no label needs are unloaded. With
    --serving-address each step is sent to the server (HandleReloadConfigRequest) and the push
    waits until the versions are AVAILABLE. One push or gc per model at a time.

    Exit codes: 0 ok, 2 N is not published or fails its checksums, 7 the server refused,
    failed or timed out (the previous config is restored, file and server), 1 anything else.
    """
    from shipyard.repository import open_repository
    from shipyard.steps.push import push_version

    result = push_version(open_repository(repo), name, version, label,
                          serving_address=serving_address, timeout_s=timeout_s,
                          progress=_progress(_quiet()))
    doc = result.to_json()
    served = (f"\n  server: {doc['server']}" if serving_address else
              "\n  (no --serving-address: the server picks the file up on its next poll)")
    if not doc["complete"]:
        served += (f"\n  NOT COMPLETE: version {version} must load before {label} can move to "
                   "it; once the server reports it AVAILABLE (shipyard status "
                   "--serving-address ...), run this push again")
    _emit(doc, as_json, f"{name}: label {label} -> version {version} "
                        f"({doc['steps']} config step(s) written)\n"
                        f"  versions loaded: {doc['after']['versions']}, "
                        f"labels: {doc['after']['labels']}\n  config: {doc['config']}" + served)


@main.command("status")
@_serving_repo_options
@_serving_address_option
@_registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
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
                       read_aliases=_registry_aliases(tracking_uri, registry_uri),
                       read_server=read_server)
    _emit(doc, as_json, _describe_status(doc))
    if doc["errors"]:
        click.get_current_context().exit(doc["errors"][0]["exit_code"])


def _describe_status(doc: dict[str, Any]) -> str:
    lines = [f"{doc['name']} in {doc['repository']} (config {doc['config']})",
             f"{'version':>7}  {'size':>11}  {'loaded':<6}  {'labels':<13} {'aliases':<24} "
             f"{'server':<10} fingerprint"]
    for row in doc["versions"]:
        size = (f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] is not None else
                "symlink" if row.get("symlink") else "not on disk")
        fingerprint = (row["fingerprint"] or "-").removeprefix("sha256:")[:12]
        lines.append(f"{row['version']:>7}  {size:>11}  {'yes' if row['in_config'] else 'no':<6}"
                     f"  {','.join(row['labels']) or '-':<13} {','.join(row['aliases']) or '-':<24}"
                     f" {row['server'] or '-':<10} {fingerprint}")
    if not doc["versions"]:
        lines.append("  (no versions)")
    lines += [f"warning: {w}" for w in doc.get("warnings", [])]
    lines += [f"error ({e['source']}): {e['message']}" for e in doc["errors"]]
    return "\n".join(lines)


@main.command("gc")
@_serving_repo_options
@click.option("--keep", "keep", type=int, required=True,
              help="Keep the newest K versions whatever points to them.")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@_registry_options
@click.option("--no-registry", is_flag=True,
              help="NAME is registered nowhere: protect versions by labels and --keep only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
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
                                        else _registry_aliases(tracking_uri, registry_uri)),
                          dry_run=dry_run, progress=_progress(_quiet()))
    verb = "would remove" if dry_run else "removed"
    kept = "; ".join(f"{v} ({', '.join(r)})" for v, r in doc["keep"].items()) or "none"
    skipped = "".join(f"\n  skipped {v}: {why}" for v, why in doc["skipped"].items())
    _emit(doc, as_json, f"{name}: {verb} versions {doc['remove'] or 'none'}\n  kept: {kept}"
          + skipped)


@main.command("validate")
@_serving_repo_options
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@click.option("--examples", required=True, metavar="PATTERN",
              help="Files of examples: a path or glob, local or any Beam/fsspec URL.")
@click.option("--format", "fmt", type=click.Choice(["tfrecord", "csv", "jsonl"]), default=None,
              help="Example format (default: from the file suffix).")
@click.option("--endpoint", default=None, help="Endpoint to run (default: the default one).")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="The source model (.keras or SavedModel): report parity with it.")
@click.option("--against", default=None, metavar="champion|VERSION",
              help="Another published version to report agreement with.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first (custom Keras objects of --source). Repeatable.")
@click.option("--unsafe", is_flag=True, help="Load a .keras --source with safe_mode off.")
@_registry_options
@click.option("--runner", default="DirectRunner", show_default=True,
              help="Beam runner (FlinkRunner, SparkRunner, DataflowRunner, ...).")
@click.option("--sample", type=int, default=None, metavar="K",
              help="Validate on a uniform sample of K examples.")
@click.option("--max-abs-error", type=float, default=None,
              help="Parity gate (default: every example within the spec's tolerance).")
@click.option("--min-agreement", type=float, default=None,
              help="Agreement gate: top-1 share (classification outputs) or share within "
                   "tolerance.")
@click.option("--agreement-output", "agreement_outputs", multiple=True, metavar="OUTPUT",
              help="An output the agreement gate covers (default: all; `classes` for classify "
                   "endpoints). Repeatable.")
@click.option("--output", default=None, metavar="PATH", help="Also write the results here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def validate_command(repo: str, name: str, version: int, examples: str, fmt: str | None,
                     endpoint: str | None, source: Path | None, against: str | None,
                     imports: tuple[str, ...], unsafe: bool, tracking_uri: str | None,
                     registry_uri: str | None, runner: str, sample: int | None,
                     max_abs_error: float | None, min_agreement: float | None,
                     agreement_outputs: tuple[str, ...], output: str | None, as_json: bool,
                     beam_args: tuple[str, ...]) -> None:
    """Run version N of NAME on real examples in an Apache Beam pipeline.

    Reports parity with the --source model and agreement with --against (champion or a
    version), to stdout, --output and MLflow (metrics and a JSON artifact on the version's
    run). Arguments after `--` go to Beam unchanged (e.g. -- --project P --region R
    --temp_location gs://b/tmp for Dataflow).

    Exit codes: 0 all gates met, 8 parity or agreement outside the thresholds, 2 bad arguments
    or unmappable examples, 6 MLflow unreachable, 1 anything else.
    """
    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    request = ValidateRequest(
        name=name, version=version, examples=examples, fmt=fmt, endpoint=endpoint,
        source=source, against=against, imports=imports, unsafe=unsafe, runner=runner,
        beam_args=tuple(a for a in beam_args if a != "--"), sample=sample,
        max_abs_error=max_abs_error, min_agreement=min_agreement,
        agreement_outputs=agreement_outputs, output=output)

    def registry() -> Any:
        from shipyard.registry.client import ModelRegistry, RegistryLocation

        return ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))

    try:
        with _library_prints_to_stderr():
            document = validate_version_on_examples(
                open_repository(repo), request,
                read_aliases=_registry_aliases(tracking_uri, registry_uri), registry=registry,
                progress=_progress(_quiet()))
    except ShipyardError as err:  # gates failed or MLflow down: the results still stand
        document = getattr(err, "document", None)
        if document is not None:
            _emit(document, as_json, _describe_validation(document))
        raise
    _emit(document, as_json, _describe_validation(document))


def _describe_validation(doc: dict[str, Any]) -> str:
    lines = [f"{doc['name']} version {doc['version']}, endpoint {doc['endpoint']}: "
             f"{doc['examples']} examples -> {'passed' if doc['passed'] else 'FAILED'}"]
    for comparison, label in (("parity", f"parity with {doc['source']}"),
                              ("agreement", f"agreement with version {doc['against']}")):
        for output, f in (doc.get(comparison) or {}).items():
            top1 = (f", top-1 {f['top1_agreement']:.2%}" if f["top1_agreement"] is not None
                    else "")
            lines.append(f"  {label}, {output}: max abs {f['max_abs_error']}, mean abs "
                         f"{f['mean_abs_error']}, within tolerance "
                         f"{f['within_tolerance']:.2%}{top1}")
    lines += [f"  gate failed: {f}" for f in doc["failures"]]
    return "\n".join(lines)


@main.group("rollout")
def rollout_group() -> None:
    """Canary rollouts on Kubernetes: steps, gates, promotion and automatic rollback."""


def _rollout_ports(name: str, namespace: str, policy: Any, tracking_uri: str | None,
                   registry_uri: str | None) -> Any:
    """The controller's adapters: tests pass fakes through click's context object."""
    factory = (click.get_current_context().obj or {}).get("rollout_ports")
    if factory is not None:
        return factory(name, namespace, policy)
    from shipyard.kube.cluster import KubeCluster, connect
    from shipyard.kube.manifests import ServingTarget
    from shipyard.kube.observe import ClusterObserver
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.rollout.controller import Ports
    from shipyard.steps.rollout import RegistryAliases

    api = connect()
    serving = policy.serving.model_dump()
    timeout = serving.pop("rollout_timeout_seconds")
    target = ServingTarget(name=name, namespace=namespace, **serving)
    registry = ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))
    return Ports(KubeCluster(api, target, rollout_timeout_s=timeout),
                 ClusterObserver(api, namespace, policy), RegistryAliases(registry))


def _holder() -> str:
    import socket

    from shipyard.registry.client import current_user

    return f"{current_user()}@{socket.gethostname()}:{os.getpid()}"


def _stored_policy(ports: Any, name: str) -> Any:
    """promote/abort/status act on a stored rollout: its serving settings come with it."""
    from shipyard.rollout.controller import current
    from shipyard.rollout.policy import RolloutPolicy

    state = current(ports, name)
    serving = state.settings if state is not None else {}
    return RolloutPolicy(steps=[{"weight": 100}], serving=serving)


def _describe_rollout(doc: dict[str, Any]) -> str:
    text = (f"{doc['name']}: version {doc['version']} over stable {doc['stable_version']}, "
            f"{doc['phase']}, step {doc['step'] + 1}, canary weight {doc['weight']}%")
    if doc.get("reason"):
        text += f"\n  {doc['reason']}"
    if doc.get("figures"):
        text += f"\n  last gate figures: {doc['figures']}"
    if doc.get("requested"):
        text += f"\n  requested: {doc['requested']} ({doc.get('request_reason')})"
    if doc.get("pending"):
        text += "\n  still to do: " + ", ".join(a["kind"] for a in doc["pending"])
    return text


_namespace_option = click.option("--namespace", default="shipyard", show_default=True,
                                 help="Kubernetes namespace of the TF Serving Deployments.")


@rollout_group.command("start")
@click.option("--name", required=True, help="Model name (registered model and Deployment).")
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path),
              help="POLICY.yaml: steps, gates, metrics, serving settings.")
@_namespace_option
@_registry_options
@click.option("--lease-wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another rollout of NAME to finish first.")
@click.option("--json", "as_json", is_flag=True, help="Print the final state as JSON.")
def rollout_start_command(name: str, version: int, policy_path: Path, namespace: str,
                          tracking_uri: str | None, registry_uri: str | None,
                          lease_wait: float, as_json: bool) -> None:
    """Roll version N of NAME out behind a canary, step by step, to promotion or rollback.

    Holds the model's Lease for the whole rollout and records its state in the cluster; run
    the same command again to resume a rollout whose controller stopped. A first deployment
    (nothing serves NAME yet) goes straight to stable.

    Exit codes: 0 promoted, 8 rolled back or aborted, 9 another rollout holds NAME,
    2 bad policy or arguments, 6 MLflow unreachable, 1 anything else.
    """
    from shipyard.core.errors import GateError
    from shipyard.core.names import validate_model_name, validate_version
    from shipyard.rollout import controller
    from shipyard.rollout.machine import PROMOTED
    from shipyard.rollout.policy import load_policy

    validate_model_name(name)
    validate_version(version)
    policy = load_policy(policy_path)
    ports = _rollout_ports(name, namespace, policy, tracking_uri, registry_uri)

    def show(state: Any) -> None:
        log.info("%s", _describe_rollout(state.to_json()))

    with _library_prints_to_stderr():
        state = controller.start(ports, name, version, policy, holder=_holder(),
                                 lease_wait_s=lease_wait, on_change=show)
    doc = state.to_json()
    _emit(doc, as_json, _describe_rollout(doc))
    if state.phase != PROMOTED:
        raise GateError(f"the rollout of {name} version {version} ended {state.phase}: "
                        f"{state.reason}")


@rollout_group.command("status")
@click.option("--name", required=True, help="Model name.")
@_namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def rollout_status_command(name: str, namespace: str, as_json: bool) -> None:
    """The current (or last) rollout of NAME, as stored in the cluster."""
    from shipyard.core.errors import UsageError
    from shipyard.rollout.controller import current
    from shipyard.rollout.policy import RolloutPolicy

    ports = _rollout_ports(name, namespace, RolloutPolicy(steps=[{"weight": 100}]), None, None)
    state = current(ports, name)
    if state is None:
        raise UsageError(f"--name {name}: no rollout of {name} is recorded in namespace "
                         f"{namespace}")
    doc = state.to_json()
    _emit(doc, as_json, _describe_rollout(doc))


def _request_command(name: str, namespace: str, what: str, reason: str | None,
                     tracking_uri: str | None, registry_uri: str | None, lease_wait: float,
                     as_json: bool) -> None:
    from shipyard.rollout import controller
    from shipyard.rollout.policy import RolloutPolicy

    probe = _rollout_ports(name, namespace, RolloutPolicy(steps=[{"weight": 100}]),
                           tracking_uri, registry_uri)
    policy = _stored_policy(probe, name)
    ports = _rollout_ports(name, namespace, policy, tracking_uri, registry_uri)
    with _library_prints_to_stderr():
        state = controller.request(ports, name, what, reason, holder=_holder(),
                                   lease_wait_s=lease_wait)
    doc = state.to_json()
    _emit(doc, as_json, _describe_rollout(doc))


def _request_options(command: Any) -> Any:
    """--namespace, the registry, --lease-wait and --json: what promote and abort share."""
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print the state as JSON.")(command)
    command = click.option("--lease-wait", type=float, default=75.0, show_default=True,
                           help="Seconds to wait for the controller to finish (or a dead "
                                "one's Lease to expire) before leaving the request to it."
                           )(command)
    return _namespace_option(_registry_options(command))


@rollout_group.command("promote")
@click.option("--name", required=True, help="Model name.")
@click.option("--reason", default="promoted by hand", show_default=True,
              help="Recorded with the champion move.")
@_request_options
def rollout_promote_command(name: str, reason: str, namespace: str, tracking_uri: str | None,
                            registry_uri: str | None, lease_wait: float,
                            as_json: bool) -> None:
    """Promote the canary of NAME now, skipping the remaining steps and gates.

    The request is stored where a running `rollout start` picks it up at its next check;
    this command waits (--lease-wait) for that controller to finish, or for a dead one's
    Lease to expire, and then carries out what is left itself.
    """
    _request_command(name, namespace, "promote", reason, tracking_uri, registry_uri,
                     lease_wait, as_json)


@rollout_group.command("abort")
@click.option("--name", required=True, help="Model name.")
@click.option("--reason", required=True, help="Why (recorded in the alias audit trail).")
@_request_options
def rollout_abort_command(name: str, reason: str, namespace: str, tracking_uri: str | None,
                          registry_uri: str | None, lease_wait: float, as_json: bool) -> None:
    """Roll the canary of NAME back now: weight 0, canary removed, champion unchanged."""
    _request_command(name, namespace, "abort", reason, tracking_uri, registry_uri, lease_wait,
                     as_json)


@main.group("schedule")
def schedule_group() -> None:
    """Recurring pipeline runs on Kubeflow Pipelines."""


@schedule_group.command("create")
@click.option("--host", required=True, help="The KFP API endpoint, e.g. https://kfp.example.")
@click.option("--cron", "cron", required=True,
              help="When: a cron expression (5 fields, or KFP's 6 with seconds first).")
@click.option("--repository", required=True, help="The model repository the runs publish to.")
@click.option("--model-name", default="demo-model", show_default=True)
@click.option("--tracking-uri", default="", help="MLflow the runs record to.")
@click.option("--serving-label", default="stable", show_default=True,
              type=click.Choice(["stable", "canary"]))
@click.option("--name", default="shipyard-reference", show_default=True,
              help="The recurring run's name.")
@click.option("--experiment", default="shipyard", show_default=True)
@click.option("--image", default=None, help="The shipyard image (default: the released one).")
@click.option("--accelerator", type=click.Choice(["none", "gpu", "tpu"]), default="none",
              show_default=True, help="Where the export step runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def schedule_create_command(host: str, cron: str, repository: str, model_name: str,
                            tracking_uri: str, serving_label: str, name: str, experiment: str,
                            image: str | None, accelerator: str, as_json: bool) -> None:
    """Create a KFP recurring run of the reference pipeline: one run at a time
    (max_concurrency 1), no catch-up of missed runs."""
    from shipyard.demo.kfp_pipeline import build_pipeline
    from shipyard.kfp.components import DEFAULT_IMAGE
    from shipyard.kfp.schedule import create_schedule, kfp_cron

    kfp_cron(cron)  # a bad expression fails before anything is compiled or sent
    with _library_prints_to_stderr():  # the KFP client prints links to stdout
        doc = create_schedule(host, cron, name=name, experiment=experiment,
                              params={"repository": repository, "model_name": model_name,
                                      "tracking_uri": tracking_uri,
                                      "serving_label": serving_label},
                              pipeline=build_pipeline(image or DEFAULT_IMAGE, accelerator))
    _emit(doc, as_json, f"recurring run {doc['recurring_run_id']} ({name}) on {host}: "
                        f"cron {doc['cron']}, one run at a time, no catch-up")


@main.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".shipyard/demo"),
              show_default=True, help="Where the models, MLflow, MLMD and examples go.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def demo_command(workdir: Path, as_json: bool) -> None:
    """Ship two small models on embedded defaults, end to end.

    Runs the reference TFX pipeline locally (train, export, verify, MLflow on SQLite, publish,
    models.config; the first version becomes stable and champion), then trains a challenger
    and takes it through an offline canary (Beam validation against the champion on sample
    data, agreement gate) to promotion. Run it again: the pipeline's version is reused and a
    new challenger takes over.
    """
    from shipyard.demo.run import run_demo

    try:
        with _library_prints_to_stderr():
            document = run_demo(workdir, progress=_progress(_quiet()), **_injected())
    except ShipyardError as err:  # the canary was rolled back: its document still stands
        if as_json and getattr(err, "document", None) is not None:
            _emit(err.document, as_json, "")  # type: ignore[attr-defined]
        raise
    _emit(document, as_json, _describe_demo(document))


def _describe_demo(doc: dict[str, Any]) -> str:
    pipeline, challenger, canary, where = (doc["pipeline"], doc["challenger"], doc["canary"],
                                           doc["where"])
    lines = [f"TFX pipeline: {doc['name']} version {pipeline['registered_model_version']} "
             f"(MLflow run {pipeline['mlflow_run_id']}; MLMD {pipeline['mlmd']})"]
    if doc["first_deployment"]:
        lines.append(f"First deployment: version {doc['first_deployment']['champion']} is "
                     "stable and champion")
    lines.append(f"Challenger: version {challenger['version']}"
                 f"{' (reused)' if challenger['reused'] else ''}")
    if canary["promoted"]:
        gates = canary["gates"]
        for output, figures in gates["agreement"].items():
            figure = (f"top-1 agreement {figures['top1_agreement']:.1%}"
                      if figures["top1_agreement"] is not None else
                      f"mean abs difference {figures['mean_abs_error']:.3g}")
            gated = output in (gates["agreement_outputs"] or [output])
            how = f"gate >= {gates['min_agreement']:.0%}" if gated else "reported"
            lines.append(f"  offline canary vs version {canary['previous_champion']}, "
                         f"{gates['examples']} examples: {output} {figure} ({how})")
        lines.append(f"  promoted: version {canary['version']} is stable and champion")
    else:
        lines.append(f"  offline canary skipped: {canary['reason']}")
    lines += ["", "Where everything is:",
              f"  MLflow UI:     {where['mlflow_ui']}  (then open http://127.0.0.1:5000)",
              f"  status:        {where['status']}",
              f"  alias history: {where['alias_history']}",
              f"  TFX MLMD:      {where['mlmd']}",
              f"  models.config: {where['models_config']}",
              "", "Model repository:", *(f"  {line}" for line in where["tree"]),
              "", _describe_status(doc["status"])]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    """Entry point returning the exit code (for tests and embedding)."""
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of raising SystemExit.
        code = main.main(args=argv, prog_name="shipyard", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        return 1
    return code if isinstance(code, int) else 0

