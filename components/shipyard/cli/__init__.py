"""`shipyard` command line. Thin: parses arguments, calls shipyard.steps, prints results.

Human output by default; `--json` prints the result document alone on stdout while progress and
shipyard's own log lines go to stderr. Everything the libraries print or log (TensorFlow's C++
logs, absl, TFX, Beam, MLflow, kfp, in this process and its children) goes to a log file per
command run instead (cli.console); `-v/--verbose` streams it all. Errors exit with the code of
their ShipyardError subclass. Nothing here imports TensorFlow at start-up, so `--help` and spec
errors answer at once: each command imports what it runs when it runs.

One module per command group; the options they share are in cli.options, what they print in
cli.output.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from shipyard import __version__
from shipyard.cli import console
from shipyard.cli.alias import alias_group
from shipyard.cli.copy import copy_command
from shipyard.cli.demo import demo_command
from shipyard.cli.export import export_command, register_command
from shipyard.cli.reconcile import reconcile_command
from shipyard.cli.rollout import rollout_group
from shipyard.cli.schedule import schedule_group
from shipyard.cli.serving import gc_command, push_command, status_command
from shipyard.cli.validate import validate_command
from shipyard.cli.verify import verify_command
from shipyard.core.errors import ShipyardError, cli_message


class _ShipyardGroup(click.Group):
    """Maps ShipyardError to its exit code with a one-paragraph message on stderr, naming the
    flag where the library named the parameter."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShipyardError as err:
            click.echo(f"error: {cli_message(err)}{_log_pointer(err)}", err=True)
            ctx.exit(err.exit_code)


def _log_pointer(err: BaseException) -> str:
    """The error paragraph's end: the run's log file and its last lines that can explain it."""
    path = getattr(err, "log_path", None)
    if path is None:
        return ""
    lines = console.tail(path)
    shown = "".join(f"\n  | {line}" for line in lines)
    return f"\nThe libraries' output is in {path}" + (f"; its last lines:{shown}" if lines
                                                       else ".")


def _logged_run(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a command's callback with the libraries' output on a log file (unless --verbose);
    a failure carries the log's path to the error paragraph."""

    @functools.wraps(callback)
    def run_logged(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if ctx.find_root().meta.get("shipyard.verbose"):
            return callback(*args, **kwargs)
        command = "-".join(ctx.command_path.split()[1:]) or "shipyard"
        workdir = kwargs.get("workdir")
        directory = console.log_directory(Path(workdir) if workdir is not None else None)
        path = None
        try:
            with console.libraries_to_log(command, directory) as path:
                return callback(*args, **kwargs)
        except ShipyardError as err:
            if path is not None:
                err.log_path = path  # type: ignore[attr-defined]
            raise
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and chosen exit codes (status's 6) speak for themselves
        except Exception:
            if path is not None:  # a defect: its traceback follows on the terminal
                click.echo(f"The libraries' output is in {path}", err=True)
            raise

    return run_logged


def _log_leaf_commands(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _log_leaf_commands(command)
        elif command.callback is not None:
            command.callback = _logged_run(command.callback)


@click.group(cls=_ShipyardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shipyard")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors and the result.")
@click.option("-v", "--verbose", is_flag=True,
              help="Stream every library's output (TensorFlow, TFX, Beam, MLflow, kfp) as it "
                   "comes, instead of writing it to .shipyard/logs/<command>-<time>.log.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """Export, verify, register and roll out TensorFlow/Keras models to TF Serving.

    Each command run writes what the libraries print to a log file under .shipyard/logs (the
    demo: under its workdir; or $SHIPYARD_LOG_DIR); a failure's message ends with that file's
    path and last lines.
    """
    ctx.meta["shipyard.verbose"] = verbose
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    # TensorFlow's C++ start-up chatter hides our own messages; users can still override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


for command in (export_command, register_command, copy_command, alias_group, push_command,
                status_command, gc_command, verify_command, reconcile_command, validate_command,
                rollout_group,
                schedule_group, demo_command):
    main.add_command(command)
del command
_log_leaf_commands(main)


def program() -> None:
    """The `shipyard` console script: `main` as click runs it, in a process that is shipyard's
    own program (its verifier and reference children are forked: exporter/children.py)."""
    from shipyard.exporter.children import fork_children_by_default

    fork_children_by_default()
    main()


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
