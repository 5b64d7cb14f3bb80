"""`shipyard demo`: two small models shipped end to end on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click

from shipyard.cli.options import injected, json_option
from shipyard.cli.output import describe_demo, emit, library_prints_to_stderr, progress, quiet
from shipyard.core.errors import ShipyardError


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".shipyard/demo"),
              show_default=True, help="Where the models, MLflow, MLMD and examples go.")
@json_option()
def demo_command(workdir: Path, as_json: bool) -> None:
    """Ship two small models on embedded defaults, end to end.

    Runs the reference TFX pipeline locally (train, export, verify, MLflow on SQLite, publish,
    models.config; the first version becomes stable and champion), then trains a challenger
    and takes it through an offline canary (validation against the champion on sample
    data, agreement gate) to promotion. Run it again: the pipeline's version is reused and a
    new challenger takes over.
    """
    from shipyard.demo.run import run_demo

    try:
        with library_prints_to_stderr():
            document = run_demo(workdir, progress=progress(quiet()),
                                **injected(launch_verifier="launch_verifier"))
    except ShipyardError as err:  # the canary was rolled back: its document still stands
        if as_json and getattr(err, "document", None) is not None:
            emit(err.document, as_json, "")  # type: ignore[attr-defined]
        raise
    emit(document, as_json, describe_demo(document))
