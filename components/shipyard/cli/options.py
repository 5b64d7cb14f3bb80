"""The options several commands share, written once: their order in a command's decorators
is the order --help lists them in. Also what the options lead to: the collaborators a caller
passed through click's context object, and the registry's alias reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from shipyard.cli import console
from shipyard.cli.output import library_prints_to_stderr

Decorator = Callable[[Any], Any]


def json_option(help: str = "Print the result as JSON on stdout.") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def import_option(help: str = "Import MODULE first (registers custom Keras objects). "
                              "Repeatable.") -> Decorator:
    return click.option("--import", "imports", multiple=True, metavar="MODULE", help=help)


def checked_runtime(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """--serving-runtime is checked while the arguments are read, before anything starts."""
    from shipyard.exporter.runtime import choose_runtime

    if value is not None:
        choose_runtime(value)  # raises UsageError (exit 2) naming the flag and the fix
    return value


def checked_repo(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """--repo is checked while the arguments are read: an unknown URL scheme, nothing after
    the scheme, or a file where the repository's directory should be is a usage error (exit
    2) naming the flag and the fix, before MLflow is asked or anything is created."""
    from shipyard.repository import check_location

    if value is not None:
        check_location(value)
    return value


def stack(*decorators: Decorator) -> Decorator:
    """One decorator doing what `decorators` do written one above the other in this order."""
    def decorate(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return decorate


def model_arguments(command: Any) -> Any:
    """MODEL --spec --repo --name: what `export` and `register` both take first."""
    return stack(
        click.argument("model", type=click.Path(path_type=Path)),
        click.option("--spec", "spec_path", required=True, type=click.Path(path_type=Path),
                     help="Export spec YAML: endpoints, variable collections, tolerance."),
        click.option("--repo", required=True, callback=checked_repo,
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
                     callback=checked_runtime,
                     help="Also verify on this TensorFlow, the one TF Serving's image runs "
                          "(e.g. 2.19; default: $SHIPYARD_SERVING_RUNTIME, else the TensorFlow "
                          "of the image shipyard's manifests render); 'none' skips the check."),
    )(command)


def registry_options(command: Any) -> Any:
    """--tracking-uri / --registry-uri, shared by every command that talks to MLflow."""
    return stack(
        click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else an "
                          "embedded SQLite store under ./.shipyard/)."),
        click.option("--registry-uri", default=None,
                     help="MLflow registry URI (default: MLFLOW_REGISTRY_URI, else the "
                          "tracking URI)."),
    )(command)


def serving_repo_options(command: Any) -> Any:
    """--repo --name: the model repository and model that push, status, gc and validate act
    on."""
    return stack(
        click.option("--repo", required=True, callback=checked_repo,
                     help="Model repository (path or fsspec URL) holding NAME and "
                          "models.config."),
        click.option("--name", required=True, help="Model name."),
    )(command)


serving_address_option = click.option(
    "--serving-address", default=None, metavar="HOST:PORT",
    help="TF Serving's gRPC address (port 8500 by default).")

namespace_option = click.option("--namespace", default="shipyard", show_default=True,
                                help="Kubernetes namespace of the TF Serving Deployments.")


def checked_notify(ctx: click.Context, param: click.Parameter,
                   value: tuple[str, ...]) -> tuple[str, ...]:
    """--notify and $SHIPYARD_NOTIFY are checked while the arguments are read: a target that
    is not an http(s) URL is a usage error (exit 2) before anything changes."""
    from shipyard.notify.events import TARGETS_ENV, targets

    targets(value, os.environ.get(TARGETS_ENV))
    return value


notify_option = click.option(
    "--notify", "notify", multiple=True, metavar="URL", callback=checked_notify,
    help="Once the change is made, send it to URL as a CloudEvent (HTTP POST, structured "
         "JSON; signed with $SHIPYARD_NOTIFY_SECRET). Repeatable; added to the "
         "comma-separated URLs of $SHIPYARD_NOTIFY. Delivery never fails the command: what "
         "is not delivered within 10 s is reported and kept in "
         ".shipyard/undelivered-events.jsonl.")


def notifier(urls: tuple[str, ...]) -> Any:
    """The Notifier of --notify and $SHIPYARD_NOTIFY for the running command (source
    shipyard://<host>/<command>); an undelivered event is reported on the terminal's stderr
    (even with --quiet) and in the run's log."""
    from shipyard.notify import Notifier

    command = "-".join(click.get_current_context().command_path.split()[1:]) or "shipyard"
    return Notifier.from_options(urls, command=command, report=_report)


def _report(line: str) -> None:
    if console.log_path() is not None:
        console.write_log(line)
    print(line, file=console.err(), flush=True)


def injected(**params: str) -> dict[str, Any]:
    """Collaborators a caller passed through click's context object, as keyword arguments:
    `injected(rollout_ports="ports")` is {"ports": obj["rollout_ports"]} if the caller passed
    one. Tests pass a verifier launcher that keeps a warm verifier ready (launch_verifier) and
    fakes of the rollout's adapters (rollout_ports); empty for a normal run."""
    obj = click.get_current_context().obj or {}
    return {param: obj[key] for key, param in params.items() if key in obj}


def registry_aliases(tracking_uri: str | None, registry_uri: str | None) -> Any:
    """Reads a model's registry aliases; MLflow is imported only when it is called."""
    def read(name: str) -> dict[str, int] | None:
        from shipyard.registry.client import ModelRegistry, RegistryLocation

        with library_prints_to_stderr():
            return ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri)
                                 ).aliases(name)
    return read


def _sign_key_help() -> str:
    return ("Sign the version with this PEM elliptic-curve private key (model-signing's key "
            "method) before it is published: N/assets.extra/model.sig covers every other file. "
            "Default: $SHIPYARD_SIGNING_KEY; without either, the version is published "
            "unsigned.")


sign_options = stack(
    click.option("--sign-key", "sign_key", default=None, metavar="PEM", help=_sign_key_help()),
    click.option("--sign-cert", "sign_cert", default=None, metavar="PEM",
                 help="With --sign-key: sign with this certificate of the key "
                      "(model-signing's certificate method). Default: $SHIPYARD_SIGNING_CERT."),
    click.option("--sign-chain", "sign_chain", multiple=True, metavar="PEM",
                 help="With --sign-cert: the certificates up to the root, carried in the "
                      "signature. Repeatable. Default: $SHIPYARD_SIGNING_CHAIN "
                      "(comma-separated)."),
)

verify_key_option = click.option(
    "--verify-key", "verify_key", default=None, metavar="PEM",
    help="Trust key: a version must carry a signature that verifies with this PEM public key "
         "(or chains up to this PEM CA certificate) before it is used; otherwise exit 4 and "
         "nothing changes. Default: $SHIPYARD_VERIFY_KEY; without either, signatures are not "
         "checked.")
