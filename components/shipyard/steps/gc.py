"""`shipyard gc`: remove version directories nothing needs any more.

A version is kept while a label of models.config points to it, while models.config loads it,
while a registry alias (candidate, canary, champion, or any other) points to it, or while it
is among the newest K. The decision is pure (`plan_gc`); removal holds the model's push/gc
lock, so no push can name a version while it is being removed.

A version directory that is a symlink is never followed or removed: gc lists it under
`skipped` with the reason. A removal that fails for lack of permission or a read-only file
system raises StorageError naming the version; versions not yet removed stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from shipyard.core.errors import UsageError
from shipyard.core.names import validate_model_name
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.serving.config import ModelServing
from shipyard.serving.config_file import current_serving


@dataclass(frozen=True)
class GcPlan:
    remove: tuple[int, ...]
    keep: dict[int, list[str]]  # version -> why it stays

    def to_json(self) -> dict[str, Any]:
        return {"remove": list(self.remove),
                "keep": {str(v): reasons for v, reasons in sorted(self.keep.items())}}


def plan_gc(versions: list[int], serving: ModelServing | None, aliases: dict[str, int],
            keep_newest: int) -> GcPlan:
    """Which of `versions` to remove. Pure."""
    if keep_newest < 0:
        raise UsageError(f"keep: expected 0 or more versions to keep, got {keep_newest}",
                         param="keep")
    reasons: dict[int, list[str]] = {v: [] for v in versions}
    for version in sorted(versions)[-keep_newest:] if keep_newest else []:
        reasons[version].append(f"among the newest {keep_newest}")
    if serving is not None:
        for label, version in sorted(serving.labels.items()):
            if version in reasons:
                reasons[version].append(f"label {label}")
        for version in serving.versions:
            if version in reasons:
                reasons[version].append("loaded by models.config")
    for alias, version in sorted(aliases.items()):
        if version in reasons:
            reasons[version].append(f"alias {alias}")
    return GcPlan(remove=tuple(v for v in sorted(versions) if not reasons[v]),
                  keep={v: r for v, r in reasons.items() if r})


@dataclass(frozen=True)
class GcResult:
    name: str
    dry_run: bool
    keep_newest: int
    aliases: dict[str, int]
    plan: GcPlan
    removed: list[int]  # [] with dry_run
    staging_removed: list[str]  # leftovers of killed exports and gc runs
    skipped: dict[str, str]  # version -> why it was left (symlinks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dry_run": self.dry_run, "keep_newest": self.keep_newest,
                "aliases": self.aliases, **self.plan.to_json(), "removed": self.removed,
                "staging_removed": self.staging_removed, "skipped": self.skipped}


def collect_garbage(repo: ModelRepository, name: str, keep_newest: int, *,
                    read_aliases: Callable[[str], dict[str, int] | None] | None,
                    dry_run: bool = False, progress: Progress = NullProgress()
                    ) -> GcResult:
    """Removes what `plan_gc` says (nothing with `dry_run`); returns the plan and what it did.

    `read_aliases` returns NAME's aliases, or None when the registry has no model NAME. It is
    asked before anything is removed: if the registry cannot be read, or does not know NAME
    (the wrong registry would make every alias invisible), gc fails and removes nothing.
    Pass `read_aliases=None` only for a model that is not registered anywhere.
    """
    validate_model_name(name)
    plan_gc([], None, {}, keep_newest)  # a bad keep fails before anything is read
    # The serving lock keeps pushes out; the publish lock keeps a version from being removed
    # between its publish and its `candidate` alias.
    with repo.serving_lock(name), repo.publish_lock(name):
        aliases: dict[str, int] = {}
        if read_aliases is not None:
            found = read_aliases(name)
            if found is None:
                raise UsageError(
                    f"name {name}: the registry has no registered model {name}, so gc cannot "
                    "see which versions its aliases protect. Point --tracking-uri/"
                    "--registry-uri (or MLFLOW_TRACKING_URI) at the registry that holds it, or "
                    "pass --no-registry if the model is not registered anywhere", param="name")
            aliases = found
        plan = plan_gc(repo.versions(name), current_serving(repo, name), aliases, keep_newest)
        skipped = {str(version): (f"a symlink to {target}: gc never follows or removes "
                                  "symlinks; remove the link yourself if nothing needs it")
                   for version, target in repo.symlinked_versions(name).items()}
        cleaned = []
        if not dry_run:
            for version in plan.remove:
                with progress.step(f"remove {repo.version_location(name, version)}"):
                    repo.remove_version(name, version)
            # Leftovers of killed exports and killed gc runs go too.
            cleaned = [str(p) for p in repo.remove_abandoned_staging(name)]
    return GcResult(name=name, dry_run=dry_run, keep_newest=keep_newest, aliases=aliases,
                    plan=plan, removed=[] if dry_run else list(plan.remove),
                    staging_removed=cleaned, skipped=skipped)
