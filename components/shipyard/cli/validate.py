"""`shipyard validate`: a published version on real examples, in an Apache Beam pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from shipyard.cli.options import (
    import_option,
    json_option,
    registry_aliases,
    registry_options,
    serving_repo_options,
)
from shipyard.cli.output import (
    describe_validation,
    emit,
    library_prints_to_stderr,
    progress,
    quiet,
)
from shipyard.core.errors import ShipyardError

log = logging.getLogger(__name__)


@click.command("validate")
@serving_repo_options
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@click.option("--examples", required=True, metavar="PATTERN",
              help="Files of examples: a path or glob; in process, any path or URL TensorFlow "
                   "reads (gs://); with a Beam --runner, any URL Beam reads.")
@click.option("--format", "fmt", type=click.Choice(["tfrecord", "csv", "jsonl"]), default=None,
              help="Example format (default: from the file suffix).")
@click.option("--endpoint", default=None, help="Endpoint to run (default: the default one).")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="The source model (.keras or SavedModel): report parity with it.")
@click.option("--against", default=None, metavar="champion|VERSION",
              help="Another published version to report agreement with.")
@import_option("Import MODULE first (custom Keras objects of --source). Repeatable.")
@click.option("--unsafe", is_flag=True, help="Load a .keras --source with safe_mode off.")
@registry_options
@click.option("--runner", default="in-process", show_default=True,
              help="in-process (this process, no Beam), or a Beam runner: a name Beam "
                   "registers (DirectRunner, PortableRunner, FlinkRunner, SparkRunner, "
                   "DataflowRunner, ...) or a class path package.module.Class.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Examples per model call. Lower it for large inputs (images): a batch's "
                   "inputs and outputs, and a few batches read ahead, are held at once.")
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
@json_option("Print the results as JSON on stdout.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def validate_command(repo: str, name: str, version: int, examples: str, fmt: str | None,
                     endpoint: str | None, source: Path | None, against: str | None,
                     imports: tuple[str, ...], unsafe: bool, tracking_uri: str | None,
                     registry_uri: str | None, runner: str, batch_size: int,
                     sample: int | None,
                     max_abs_error: float | None, min_agreement: float | None,
                     agreement_outputs: tuple[str, ...], output: str | None, as_json: bool,
                     beam_args: tuple[str, ...]) -> None:
    """Run version N of NAME on real examples, in this process or on a Beam runner.

    Reports parity with the --source model and agreement with --against (champion or a
    version), to stdout, --output and MLflow (metrics and a JSON artifact on the version's
    run). With a Beam --runner, arguments after `--` go to Beam unchanged (e.g. -- --project P
    --region R --temp_location gs://b/tmp for Dataflow).

    Exit codes: 0 all gates met, 8 parity or agreement outside the thresholds, 2 bad arguments
    or unmappable examples, 6 MLflow unreachable, 1 anything else.
    """
    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples
    from shipyard.validation.runners import (
        absolute,
        absolute_option,
        is_in_process,
        local_path_warnings,
        option_value,
    )

    # Beam's workers resolve a relative path in their own working directory (a worker pool's,
    # a container's), not the one the user typed it in: local paths are made absolute here,
    # before the pipeline is built. URLs stay as they are.
    repo, examples = absolute(repo), absolute(examples)
    source = Path(absolute(str(source))) if source is not None else None
    output = absolute(output) if output is not None else None
    beam = absolute_option(tuple(a for a in beam_args if a != "--"), "--temp_location")
    # --output is written by this process, not by the workers: it needs no warning.
    for warning in [] if is_in_process(runner) else local_path_warnings(runner, beam, [
            ("--repo", repo), ("--examples", examples),
            ("--source", str(source) if source is not None else None),
            ("--temp_location", option_value(beam, "--temp_location"))]):
        log.warning("warning: %s", warning)

    request = ValidateRequest(
        name=name, version=version, examples=examples, fmt=fmt, endpoint=endpoint,
        source=source, against=against, imports=imports, unsafe=unsafe, runner=runner,
        beam_args=beam, batch_size=batch_size, sample=sample, max_abs_error=max_abs_error,
        min_agreement=min_agreement, agreement_outputs=agreement_outputs, output=output)

    def registry() -> Any:
        from shipyard.registry.client import ModelRegistry, RegistryLocation

        return ModelRegistry(RegistryLocation.resolve(tracking_uri, registry_uri))

    try:
        with library_prints_to_stderr():
            document = validate_version_on_examples(
                open_repository(repo), request,
                read_aliases=registry_aliases(tracking_uri, registry_uri), registry=registry,
                progress=progress(quiet())).to_json()
    except ShipyardError as err:  # gates failed or MLflow down: the results still stand
        document = getattr(err, "document", None)
        if document is not None:
            emit(document, as_json, describe_validation(document))
        raise
    emit(document, as_json, describe_validation(document))
