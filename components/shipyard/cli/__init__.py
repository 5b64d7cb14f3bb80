"""`shipyard` command line. Thin: parses arguments, calls shipyard.steps, prints results.

Human output by default; `--json` prints the result document alone on stdout while progress and
logs go to stderr. Errors exit with the code of their ShipyardError subclass. Nothing here
imports TensorFlow at start-up, so `--help` and spec errors answer at once: each command
imports what it runs when it runs.

One module per command group; the options they share are in cli.options, what they print in
cli.output.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from shipyard import __version__
from shipyard.cli.alias import alias_group
from shipyard.cli.demo import demo_command
from shipyard.cli.export import export_command, register_command
from shipyard.cli.rollout import rollout_group
from shipyard.cli.schedule import schedule_group
from shipyard.cli.serving import gc_command, push_command, status_command
from shipyard.cli.validate import validate_command
from shipyard.core.errors import ShipyardError, cli_message


class _ShipyardGroup(click.Group):
    """Maps ShipyardError to its exit code with a one-paragraph message on stderr, naming the
    flag where the library named the parameter."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShipyardError as err:
            click.echo(f"error: {cli_message(err)}", err=True)
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


for command in (export_command, register_command, alias_group, push_command, status_command,
                gc_command, validate_command, rollout_group, schedule_group, demo_command):
    main.add_command(command)
del command


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
