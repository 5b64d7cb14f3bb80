"""`shipyard validate`: a published version on real examples, in process or on a Beam runner.

Composes: the repository (the version and its manifest), the registry (champion, and where the
results are logged), the example mapping and the runner (in_process.py, or the Beam pipeline),
the gates. Nothing is written
into the version directory: published versions are immutable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shipyard.core.errors import GateError, ShipyardError, UsageError
from shipyard.core.manifest import Manifest
from shipyard.core.names import validate_model_name, validate_version
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.vocabulary import CHAMPION
from shipyard.validation.runners import option_value  # imports no Beam

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateRequest:
    name: str
    version: int
    examples: str
    fmt: str | None = None
    endpoint: str | None = None
    source: Path | None = None
    against: str | None = None  # "champion" or a version number
    imports: tuple[str, ...] = ()
    unsafe: bool = False
    runner: str = "in-process"  # validation/in_process.py IN_PROCESS; else a Beam runner
    beam_args: tuple[str, ...] = ()
    # Examples per model call: each call has a fixed cost (bench/validate.py), and a batch's
    # inputs and outputs are held at once.
    batch_size: int = 1024
    sample: int | None = None
    max_abs_error: float | None = None
    min_agreement: float | None = None
    # The outputs the agreement gate covers (default: all). A regression output of a retrained
    # model never agrees within the export tolerance; its figures are still reported.
    agreement_outputs: tuple[str, ...] = ()
    output: str | None = None


@dataclass(frozen=True)
class ValidationResult:
    """What a validation found; `to_json()` is the document `--json`, `--output` and the
    MLflow run hold."""

    name: str
    version: int
    endpoint: str
    examples: int  # how many were run
    files: int
    format: str
    source: str | None  # the source model parity was measured against
    against: int | None  # the version agreement was measured against
    parity: dict[str, Any] | None  # output -> figures
    agreement: dict[str, Any] | None  # output -> figures
    thresholds: dict[str, Any]
    failures: list[str]  # the gates that failed
    runner: str
    time: str  # ISO 8601, UTC
    logged_to_run: str | None = None  # the MLflow run the results were logged to

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "endpoint": self.endpoint,
                "examples": self.examples, "files": self.files, "format": self.format,
                "source": self.source, "against": self.against, "parity": self.parity,
                "agreement": self.agreement, "thresholds": self.thresholds,
                "failures": self.failures, "passed": self.passed, "runner": self.runner,
                "time": self.time, "logged_to_run": self.logged_to_run}


def validate_version_on_examples(
        repo: ModelRepository, request: ValidateRequest, *,
        read_aliases: Callable[[str], dict[str, int] | None],
        registry: Callable[[], Any] | None = None,
        progress: Progress = NullProgress()) -> ValidationResult:
    """Runs the pipeline and returns its results; GateError (exit 8) when a gate fails, after
    the results were written out and logged (the error's `document` holds them)."""
    from shipyard.steps.push import check_published
    from shipyard.validation.examples import (
        declared_inputs,
        examples_input,
        format_of,
        shared_csv_header,
    )

    validate_model_name(request.name)
    validate_version(request.version)
    _check_thresholds(request)
    if request.source is None and request.against is None:
        raise UsageError("nothing to compare: pass --source MODEL (parity with the source "
                         "model) and/or --against champion|VERSION (agreement with another "
                         "version)")
    runner = _runner(request)
    from shipyard.validation.runners import IN_PROCESS, is_in_process

    if is_in_process(request.runner):  # one name in the results, however it was spelled
        request = dataclasses.replace(request, runner=IN_PROCESS)
    check_published(repo, request.name, request.version)
    manifest = repo.read_manifest(request.name, request.version)
    endpoint = _endpoint(manifest, request.endpoint)
    signature = manifest.signatures[endpoint]
    _check_agreement_outputs(request, signature["outputs"], endpoint)
    kind = _kind(manifest.spec, endpoint)
    agreement_outputs = request.agreement_outputs or _default_agreement_outputs(kind,
                                                                                signature)
    fmt = format_of(request.examples, request.fmt)
    files = runner.matching_files(request.examples)
    against = _resolve_against(repo, request, read_aliases)
    if against is not None:
        _check_same_signature(manifest, repo.read_manifest(request.name, against), endpoint,
                              against)
    if request.source is not None:
        from shipyard.exporter.source import check_model_path

        check_model_path(request.source)

    from shipyard.validation.stages import ValidationJob

    tolerance = manifest.spec.get("tolerance", {})
    job = ValidationJob(
        examples=request.examples, fmt=fmt,
        csv_header=shared_csv_header(files, runner.first_line) if fmt == "csv" else None,
        decls=tuple(declared_inputs(signature)),
        examples_input=examples_input(manifest.spec, endpoint), kind=kind,
        endpoint=endpoint,
        version_dir=repo.version_location(request.name, request.version),
        spec=manifest.spec, source=str(request.source) if request.source else None,
        imports=request.imports, unsafe=request.unsafe,
        against_dir=repo.version_location(request.name, against) if against else None,
        atol=float(tolerance.get("atol", 1e-5)), rtol=float(tolerance.get("rtol", 1e-5)),
        sample=request.sample, min_batch_size=request.batch_size,
        max_batch_size=request.batch_size)
    with progress.step(f"run the validation on {len(files)} file(s) ({request.runner})"):
        outcome = runner.run(job, files)
    if outcome["unmappable"]:
        listed = "\n".join(f"  - {e}" for e in outcome["unmappable_examples"])
        raise UsageError(
            f"examples {request.examples}: {outcome['unmappable']} example(s) do not map onto "
            f"endpoint {endpoint!r} of {request.name} version {request.version}:\n{listed}",
            param="examples")
    if outcome["examples"] == 0:
        raise UsageError(f"examples {request.examples}: the files hold no examples",
                         param="examples")

    from shipyard.validation.stats import gate_failures, summarize

    summary = summarize(outcome["stats"])
    failures = gate_failures(summary, max_abs_error=request.max_abs_error,
                             min_agreement=request.min_agreement,
                             agreement_outputs=agreement_outputs or None)
    result = ValidationResult(
        name=request.name, version=request.version, endpoint=endpoint,
        examples=outcome["examples"], files=len(files), format=fmt,
        source=str(request.source) if request.source else None, against=against,
        parity=summary.get("parity"), agreement=summary.get("agreement"),
        thresholds={"max_abs_error": request.max_abs_error,
                    "min_agreement": request.min_agreement,
                    "agreement_outputs": list(agreement_outputs) or None,
                    **tolerance},
        failures=failures, runner=request.runner,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if request.output:
        _write(request.output, result.to_json())
    if registry is not None:
        try:
            with progress.step("log the results to MLflow"):
                result = dataclasses.replace(
                    result, logged_to_run=_log(registry(), request, result.to_json()))
        except ShipyardError as err:  # the results stand; the caller still prints them
            raise type(err)(str(err), param=err.param, document=result.to_json()) from err
    if failures:
        raise GateError("validation gates failed:\n" + "\n".join(f"  - {f}" for f in failures),
                        document=result.to_json())
    return result


def _check_thresholds(request: ValidateRequest) -> None:
    if request.batch_size < 1:
        raise UsageError(f"batch_size: expected a positive number of examples, got "
                         f"{request.batch_size}", param="batch_size")
    if request.sample is not None and request.sample < 1:
        raise UsageError(f"sample: expected a positive number of examples, got "
                         f"{request.sample}", param="sample")
    if request.max_abs_error is not None and request.max_abs_error < 0:
        raise UsageError(f"max_abs_error: expected 0 or more, got {request.max_abs_error}",
                         param="max_abs_error")
    if request.min_agreement is not None and not 0 <= request.min_agreement <= 1:
        raise UsageError(f"min_agreement: expected a share between 0 and 1, got "
                         f"{request.min_agreement}", param="min_agreement")


def _check_agreement_outputs(request: ValidateRequest, outputs: dict[str, Any],
                             endpoint: str) -> None:
    unknown = [o for o in request.agreement_outputs if o not in outputs]
    if unknown:
        raise UsageError(f"agreement_output {', '.join(unknown)}: endpoint {endpoint!r} has "
                         f"no such output; its outputs are {', '.join(sorted(outputs))}",
                         param="agreement_output")
    if request.agreement_outputs and request.min_agreement is None:
        raise UsageError("agreement_output names the outputs the agreement gate covers; "
                         "pass --min-agreement too", param="agreement_output")


def _kind(spec: dict[str, Any], endpoint: str) -> str:
    declared = next(e for e in spec["endpoints"] if e["name"] == endpoint)
    return declared.get("kind") or "predict"  # manifests from before kinds: predict


def _default_agreement_outputs(kind: str, signature: dict[str, Any]) -> tuple[str, ...]:
    """What the agreement gate covers without --agreement-output. A classify endpoint: its
    `classes`, i.e. whether both versions name the same top-1 class (what its callers act
    on); its `scores` are still reported, but a retrained model's scores are not expected to
    stay within the export tolerance. With one score per example there is no top-1 to
    compare, so every output is gated. Other endpoints: every output."""
    classes = signature["outputs"].get("classes", {}).get("shape") or [None, None]
    if kind == "classify" and classes[-1] != 1:
        return ("classes",)
    return ()


def _endpoint(manifest: Manifest, requested: str | None) -> str:
    endpoints = manifest.endpoint_names()
    if requested is None or requested == "serving_default":
        # serving_default is the default endpoint's signature under another name.
        return manifest.default_endpoint
    if requested not in endpoints:
        raise UsageError(f"endpoint: the version has no endpoint {requested!r}; it has "
                         f"{', '.join(endpoints)}", param="endpoint")
    return requested


def _check_same_signature(manifest: Manifest, other: Manifest | None,
                          endpoint: str, version: int) -> None:
    signatures = other.signatures if other else {}
    if endpoint not in signatures:
        raise UsageError(f"against: version {version} has no endpoint {endpoint!r}; it has "
                         f"{', '.join(sorted(signatures)) or 'none'}", param="against")
    if signatures[endpoint] != manifest.signatures[endpoint]:
        raise UsageError(f"against: endpoint {endpoint!r} of version {version} has another "
                         f"signature ({signatures[endpoint]}) than the version validated "
                         f"({manifest.signatures[endpoint]}); agreement needs the same "
                         "inputs and outputs", param="against")


def _resolve_against(repo: ModelRepository, request: ValidateRequest,
                     read_aliases: Callable[[str], dict[str, int] | None]) -> int | None:
    from shipyard.steps.push import check_published

    if request.against is None:
        return None
    if request.against == CHAMPION:
        aliases = read_aliases(request.name) or {}
        if CHAMPION not in aliases:
            raise UsageError(f"against champion: registered model {request.name} has no "
                             "champion alias; pass a version number instead", param="against")
        other = aliases[CHAMPION]
    elif request.against.isdigit():
        other = int(request.against)
    else:
        raise UsageError(f"against: expected 'champion' or a version number, got "
                         f"{request.against!r}", param="against")
    if other == request.version:
        raise UsageError(f"against: version {other} is the version being validated",
                         param="against")
    check_published(repo, request.name, other, param="against")
    return other


def metrics_of(document: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: validation.<comparison>.<output>.<figure>."""
    metrics = {"validation.examples": float(document["examples"]),
               "validation.passed": 1.0 if document["passed"] else 0.0}
    for comparison in ("parity", "agreement"):
        for output, figures in (document.get(comparison) or {}).items():
            for key, value in figures.items():
                if value is not None and key != "examples":
                    metrics[f"validation.{comparison}.{output}.{key}"] = float(value)
    return metrics


def _log(registry: Any, request: ValidateRequest, document: dict[str, Any]) -> str | None:
    registered = registry.find_version(request.name, request.version)
    if registered is None or not registered.run_id:
        log.info("%s version %s is not registered at %s: results not logged to MLflow",
                 request.name, request.version, registry.location.registry_uri)
        return None
    stamp = document["time"].replace(":", "").replace("-", "")
    registry.log_results(registered.run_id, metrics_of(document),
                         json.dumps(document, indent=2, sort_keys=True),
                         f"validation/validation-{stamp}.json")
    return registered.run_id


def _write(output: str, document: dict[str, Any]) -> None:
    import fsspec

    try:
        with fsspec.open(output, "w") as f:
            f.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        raise UsageError(f"output {output}: cannot write the results: {err}",
                         param="output") from None


@dataclass(frozen=True)
class _Runner:
    """Where the validation runs: how it lists and reads the example files, and runs."""

    matching_files: Callable[[str], list[str]]
    first_line: Callable[[str], str]
    run: Callable[[Any, list[str]], dict[str, Any]]


def _runner(request: ValidateRequest) -> _Runner:
    """The in-process runner (no Beam imported), or a Beam runner; UsageError (param
    `runner`) for a runner Beam cannot make or one that needs options it was not given."""
    from shipyard.validation.runners import IN_PROCESS, is_in_process

    if is_in_process(request.runner):
        from shipyard.validation import in_process

        if request.beam_args:
            raise UsageError(
                f"runner {IN_PROCESS} takes no Beam pipeline options (given: "
                f"{' '.join(request.beam_args)}); pass --runner DirectRunner, or another Beam "
                "runner, to run the Beam pipeline with them", param="runner")
        return _Runner(in_process.matching_files, in_process.first_line,
                       lambda job, files: in_process.run_in_process(job, files))

    from shipyard.validation.runners import is_direct, runner_class

    runner_class(request.runner)  # a runner Beam cannot make is a usage error, found now
    direct = is_direct(request.runner)  # DirectRunner, by any name Beam gives it
    if not direct and option_value(request.beam_args, "--temp_location") is None:
        raise UsageError(f"runner {request.runner}: pass -- --temp_location URL (a bucket "
                         "path the workers can write to); the results are collected there",
                         param="runner")
    beam_args = list(request.beam_args)
    if direct and option_value(request.beam_args, "--direct_num_workers") is None:
        # One in-memory worker: measured fastest (bench/validate.py), since parsing and
        # mapping examples is Python and threads contend for the GIL; worker processes would
        # each pay TensorFlow's import (~6 s here).
        beam_args += ["--direct_num_workers=1", "--direct_running_mode=in_memory"]

    def run(job: Any, files: list[str]) -> dict[str, Any]:
        from shipyard.validation.pipeline import run_pipeline

        with contextlib.ExitStack() as stack:
            results_dir = option_value(request.beam_args, "--temp_location") or \
                stack.enter_context(tempfile.TemporaryDirectory(prefix="shipyard-validate-"))
            return run_pipeline(job, runner=request.runner, beam_args=beam_args,
                                results_dir=results_dir)

    from shipyard.validation import pipeline

    return _Runner(pipeline.matching_files, pipeline.first_line, run)

