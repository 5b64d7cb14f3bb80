"""The offline canary: a candidate served beside the champion under the `canary` label,
validated against the champion on sample data (Apache Beam, agreement gate), then promoted or
rolled back, with every label step and alias move recorded as `shipyard rollout` records them.

`shipyard rollout` runs the canary on a cluster with live traffic; this one needs only the
repository's models.config (and TF Serving's address, when a server reads that file), MLflow
and example files. It is what `shipyard demo` runs, and what a pipeline without a cluster can
run.

Failure handling:
- Everything that can refuse the version (unknown, unpublished, another canary in progress)
  is checked before models.config or an alias changes.
- If validation fails or breaks off, the canary label and alias are removed again and the
  champion stays; a rollback step that fails is named in the error, after the others ran.
- Promotion is re-runnable: if it stops halfway, the error says so, and the same call run
  again finishes it (each step finds its work done or does it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from shipyard.core.audit import check_move
from shipyard.core.errors import GateError, ShipyardError, UsageError
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.vocabulary import CHAMPION, STABLE
from shipyard.registry.client import ModelRegistry
from shipyard.steps.push import drop_label, push_version
from shipyard.steps.rollout import CANARY, RegistryAliases
from shipyard.steps.validate import ValidationResult


class Labels:
    """Moves models.config labels for the canary. With a server, each push waits for it.
    Without one, a push stops once it has loaded a new version, because a server polling the
    file refuses a label on a version it has not loaded (and then never loads it); only when
    no server reads the file (`file_only`: a demo, a staging copy) are the remaining steps
    written straight away."""

    def __init__(self, repo: ModelRepository, name: str, serving_address: str | None,
                 file_only: bool, progress: Progress):
        if serving_address is None and not file_only:
            raise UsageError("serving_address: the canary moves labels in several steps and "
                             "each must be loaded before the next; pass TF Serving's gRPC "
                             "address, or file_only=True when no server reads "
                             f"{repo.config_location}")
        self.repo, self.name, self.address, self.progress = repo, name, serving_address, progress

    def point(self, label: str, version: int) -> None:
        for _ in range(3):  # load, move, unload: at most three steps
            if push_version(self.repo, self.name, version, label, serving_address=self.address,
                            progress=self.progress).complete:
                return
        raise ShipyardError(f"models.config: the {label} label of {self.name} did not reach "
                            f"version {version}; check {self.repo.config_location}")

    def drop(self, label: str) -> None:
        drop_label(self.repo, self.name, label, serving_address=self.address,
                   progress=self.progress)

    def points_at(self, label: str) -> int | None:
        from shipyard.serving.config_file import current_serving

        serving = current_serving(self.repo, self.name)
        return serving.labels.get(label) if serving else None


@dataclass(frozen=True)
class CanaryResult:
    """A first deployment, a canary promoted, or a version that already was the champion."""

    name: str
    champion: int
    version: int | None = None  # None for a first deployment (champion is the version)
    promoted: bool = False
    first_deployment: bool = False
    previous_champion: int | None = None
    reason: str | None = None  # why nothing was promoted
    gates: dict[str, Any] | None = None  # what the alias record keeps (gate_figures)
    validation: ValidationResult | None = None

    def to_json(self) -> dict[str, Any]:
        if self.first_deployment:
            return {"name": self.name, "champion": self.champion, "first_deployment": True}
        if not self.promoted:
            return {"name": self.name, "version": self.version, "champion": self.champion,
                    "promoted": False, "reason": self.reason}
        return {"name": self.name, "version": self.version,
                "previous_champion": self.previous_champion, "champion": self.champion,
                "promoted": True, "gates": self.gates,
                "validation": self.validation.to_json() if self.validation else None}


def first_deployment(repo: ModelRepository, registry: ModelRegistry, name: str, version: int,
                     *, serving_address: str | None = None, file_only: bool = False,
                     pipeline_run_id: str | None = None,
                     progress: Progress = NullProgress()) -> CanaryResult:
    """The model has no champion, so there is nothing to compare against: `version` becomes
    stable and champion directly (the rollout's first-deployment rule). Run again, it
    finishes what an interrupted call left."""
    labels = Labels(repo, name, serving_address, file_only, progress)
    aliases = RegistryAliases(registry, pipeline_run_id)
    champion = aliases.champion(name)
    if champion not in (None, version):
        raise UsageError(f"{name} already has a champion (version {champion}); a new version "
                         "goes through a canary")
    _check_version(registry, name, version)
    labels.point(STABLE, version)
    if champion is None:
        with progress.step(f"alias champion -> {name} version {version}"):
            aliases.move_champion(name, version, reason="first deployment: no champion to "
                                  "compare against", gates={})
    return CanaryResult(name=name, champion=version, first_deployment=True)


def offline_canary(repo: ModelRepository, registry: ModelRegistry, name: str, version: int,
                   examples: str, *, min_agreement: float,
                   agreement_outputs: tuple[str, ...] = (), serving_address: str | None = None,
                   file_only: bool = False, pipeline_run_id: str | None = None,
                   progress: Progress = NullProgress()) -> CanaryResult:
    """Canary `version` against the champion on `examples`; promoted when every agreement
    gate holds, else rolled back (GateError, exit 8, carrying the validation results)."""
    labels = Labels(repo, name, serving_address, file_only, progress)
    aliases = RegistryAliases(registry, pipeline_run_id)
    current = registry.aliases(name) or {}
    champion = current.get(CHAMPION)
    if champion is None:
        raise UsageError(f"{name} has no champion to compare version {version} against; "
                         "deploy a first version with first_deployment")
    other = current.get(CANARY, labels.points_at(CANARY))
    if other not in (None, version):
        raise UsageError(f"{name} has a canary in progress (version {other}); finish or "
                         "abort it first (`shipyard rollout abort`, or remove its canary "
                         "label and alias)")
    if champion == version:
        _promote(labels, aliases, name, version, champion, {})  # finishes an interrupted one
        return CanaryResult(name=name, version=version, champion=champion,
                            reason=f"version {version} is already the champion")
    _check_version(registry, name, version)
    try:
        labels.point(CANARY, version)
        with progress.step(f"alias canary -> {name} version {version}"):
            aliases.set_canary(name, version, reason=f"offline canary against champion "
                               f"{champion}")
        validation = _validate(repo, registry, name, version, examples, champion,
                               min_agreement, agreement_outputs, progress)
    except BaseException as err:  # Ctrl-C included: never leave a canary behind
        _roll_back(labels, aliases, name, version, champion, err)
        raise  # _roll_back raised a fuller error unless the original should stand as it is
    gates = gate_figures(validation.to_json())
    try:
        _promote(labels, aliases, name, version, champion, gates)
    except ShipyardError as err:
        raise type(err)(f"{err}\nThe promotion of {name} version {version} stopped halfway; "
                        "run the same offline canary again to finish it", param=err.param,
                        document=err.document) from None
    return CanaryResult(name=name, version=version, previous_champion=champion,
                        champion=version, promoted=True, gates=gates, validation=validation)


def _check_version(registry: ModelRegistry, name: str, version: int) -> None:
    """Refuses, before anything changes, a version its aliases could not point to."""
    check_move(CANARY, version_tags=dict(registry.version(name, version).tags), force=False,
               by_rollout=True)


def _validate(repo: ModelRepository, registry: ModelRegistry, name: str, version: int,
              examples: str, champion: int, min_agreement: float,
              agreement_outputs: tuple[str, ...], progress: Progress) -> ValidationResult:
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    request = ValidateRequest(name=name, version=version, examples=examples,
                              against=str(champion), min_agreement=min_agreement,
                              agreement_outputs=agreement_outputs)
    return validate_version_on_examples(repo, request, read_aliases=registry.aliases,
                                        registry=lambda: registry, progress=progress)


def _promote(labels: Labels, aliases: RegistryAliases, name: str, version: int,
             champion: int, gates: dict[str, Any]) -> None:
    """stable -> version, canary label dropped, champion -> version, canary alias cleared;
    each step is skipped when already done."""
    labels.point(STABLE, version)
    if labels.points_at(CANARY) == version:
        labels.drop(CANARY)
    if champion != version:
        aliases.move_champion(name, version, reason=f"offline canary passed against "
                              f"champion {champion}", gates=gates)
    if (aliases.registry.aliases(name) or {}).get(CANARY) == version:
        aliases.clear_canary(name, reason=f"version {version} promoted", gates=gates)


def _roll_back(labels: Labels, aliases: RegistryAliases, name: str, version: int,
               champion: int, cause: BaseException) -> None:
    """Removes the canary label and alias, each attempted whatever happened to the other;
    then raises the cause, with what failed in the rollback added."""
    document = cause.document if isinstance(cause, ShipyardError) else None
    gates = gate_figures(document) if document else {}
    text = str(cause) or type(cause).__name__  # a KeyboardInterrupt has no message
    first_line = text.splitlines()[0]
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("drop the canary label", lambda: labels.drop(CANARY)),
        ("clear the canary alias", lambda: aliases.clear_canary(
            name, reason=f"offline canary of version {version} rolled back: {first_line}",
            gates=gates)),
    ]
    failed = []
    for what, step in steps:
        try:
            step()
        except Exception as err:  # the other step still runs; both are reported
            failed.append(f"{what} failed: {err}")
    if failed:
        message = (f"{name} version {version}: {text}\nThe rollback is incomplete; "
                   + "; ".join(failed) + ". Remove the canary label and alias by hand "
                   "(`shipyard alias history` shows them).")
        error_class = type(cause) if isinstance(cause, ShipyardError) else ShipyardError
        raise error_class(message, document=document) from cause
    if isinstance(cause, GateError):
        raise GateError(f"{name} version {version} was rolled back; champion stays version "
                        f"{champion}: {cause}", document=document) from None


def gate_figures(validation: dict[str, Any]) -> dict[str, Any]:
    """What the alias record keeps of a validation document (ValidationResult.to_json(), or
    a failed gate's error document): the examples, the thresholds and, per output, the
    agreement figures."""
    agreement = {
        output: {k: figures[k] for k in ("top1_agreement", "within_tolerance",
                                         "max_abs_error", "mean_abs_error")}
        for output, figures in (validation.get("agreement") or {}).items()}
    return {"examples": validation["examples"], "against": validation["against"],
            "min_agreement": validation["thresholds"]["min_agreement"],
            "agreement_outputs": validation["thresholds"].get("agreement_outputs"),
            "agreement": agreement, "failures": validation["failures"],
            "passed": validation["passed"]}
