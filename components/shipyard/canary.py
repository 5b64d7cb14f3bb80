"""The offline canary: a candidate served beside the champion under the `canary` label,
validated against the champion on sample data (Apache Beam, agreement gate), then promoted or
rolled back, with every label step and alias move recorded as `shipyard rollout` records them.

`shipyard rollout` runs the canary on a cluster with live traffic; this one needs only the
repository's models.config (and a TF Serving address, when one is given), MLflow and example
files. It is what `shipyard demo` runs, and what a pipeline without a cluster can run.

Failure leaves nothing half-done: if validation fails or breaks off, the canary label and
alias are removed again and the champion stays. Promotion is re-runnable: run again after an
interruption, each step finds its work done or does it.
"""

from __future__ import annotations

from typing import Any

from shipyard.errors import GateError, UsageError
from shipyard.progress import NullProgress, Progress
from shipyard.push import drop_label, push_version
from shipyard.registry.client import ModelRegistry
from shipyard.repository import ModelRepository
from shipyard.rollout.aliases import RegistryAliases

STABLE = "stable"
CANARY = "canary"


def first_deployment(repo: ModelRepository, registry: ModelRegistry, name: str, version: int,
                     *, serving_address: str | None = None, pipeline_run_id: str | None = None,
                     progress: Progress = NullProgress()) -> dict[str, Any]:
    """The model has no champion, so there is nothing to compare against: `version` becomes
    stable and champion directly (the rollout's first-deployment rule)."""
    aliases = RegistryAliases(registry, pipeline_run_id)
    champion = aliases.champion(name)
    if champion is not None:
        raise UsageError(f"{name} already has a champion (version {champion}); a new version "
                         "goes through a canary")
    label_until_complete(repo, name, version, STABLE, serving_address, progress)
    with progress.step(f"alias champion -> {name} version {version}"):
        aliases.move_champion(name, version, reason="first deployment: no champion to "
                              "compare against", gates={})
    return {"name": name, "champion": version, "first_deployment": True}


def offline_canary(repo: ModelRepository, registry: ModelRegistry, name: str, version: int,
                   examples: str, *, min_agreement: float,
                   agreement_outputs: tuple[str, ...] = (), serving_address: str | None = None,
                   pipeline_run_id: str | None = None,
                   progress: Progress = NullProgress()) -> dict[str, Any]:
    """Canary `version` against the champion on `examples`; promoted when every agreement
    gate holds, else rolled back (GateError, exit 8, carrying the validation results)."""
    from shipyard.validate import ValidateRequest, validate_version_on_examples

    aliases = RegistryAliases(registry, pipeline_run_id)
    champion = aliases.champion(name)
    if champion is None:
        raise UsageError(f"{name} has no champion to compare version {version} against; "
                         "deploy a first version with first_deployment")
    if champion == version:
        return {"name": name, "version": version, "champion": champion, "promoted": False,
                "reason": f"version {version} is already the champion"}
    label_until_complete(repo, name, version, CANARY, serving_address, progress)
    with progress.step(f"alias canary -> {name} version {version}"):
        aliases.set_canary(name, version, reason=f"offline canary against champion {champion}")
    request = ValidateRequest(name=name, version=version, examples=examples,
                              against=str(champion), min_agreement=min_agreement,
                              agreement_outputs=agreement_outputs)
    try:
        validation = validate_version_on_examples(
            repo, request, read_aliases=registry.aliases, registry=lambda: registry,
            progress=progress)
    except BaseException as err:
        document = getattr(err, "document", None)
        gates = gate_figures(document) if document else {}
        with progress.step(f"roll back: drop the canary label of {name}"):
            drop_label(repo, name, CANARY, serving_address=serving_address)
            aliases.clear_canary(name, reason=f"offline canary of version {version} rolled "
                                 f"back: {str(err).splitlines()[0]}", gates=gates)
        if isinstance(err, GateError):
            raise GateError(f"{name} version {version} was rolled back; champion stays "
                            f"version {champion}: {err}", document=document) from None
        raise
    gates = gate_figures(validation)
    label_until_complete(repo, name, version, STABLE, serving_address, progress)
    with progress.step(f"promote: drop the canary label, alias champion -> {version}"):
        drop_label(repo, name, CANARY, serving_address=serving_address)
        aliases.move_champion(name, version, reason=f"offline canary passed against "
                              f"champion {champion}", gates=gates)
        aliases.clear_canary(name, reason=f"version {version} promoted", gates=gates)
    return {"name": name, "version": version, "previous_champion": champion,
            "champion": version, "promoted": True, "gates": gates, "validation": validation}


def label_until_complete(repo: ModelRepository, name: str, version: int, label: str,
                         serving_address: str | None, progress: Progress) -> None:
    """Moves the label all the way. With a server, one push does it. Without one, a push
    stops once it has loaded a new version (a server polling the file must load it before a
    label may point at it); here no server loads anything, so the next step follows."""
    for _ in range(3):  # load, move, unload: at most three steps
        if push_version(repo, name, version, label, serving_address=serving_address,
                        progress=progress).complete:
            return
    raise UsageError(f"models.config: the {label} label of {name} did not reach version "
                     f"{version}; check {repo.config_location}")


def gate_figures(validation: dict[str, Any]) -> dict[str, Any]:
    """What the alias record keeps of a validation: the examples, the thresholds and, per
    output, the agreement figures."""
    agreement = {
        output: {k: figures[k] for k in ("top1_agreement", "within_tolerance",
                                         "max_abs_error", "mean_abs_error")}
        for output, figures in (validation.get("agreement") or {}).items()}
    return {"examples": validation["examples"], "against": validation["against"],
            "min_agreement": validation["thresholds"]["min_agreement"],
            "agreement_outputs": validation["thresholds"].get("agreement_outputs"),
            "agreement": agreement, "failures": validation["failures"],
            "passed": validation["passed"]}
