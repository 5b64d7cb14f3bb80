"""`shipyard gc`: remove version directories nothing needs any more.

A version is kept while a label of models.config points to it, while models.config loads it,
while a registry alias (candidate, canary, champion, or any other) points to it, or while it
is among the newest K. The decision is pure (`plan_gc`); removal holds the model's push/gc
lock, so no push can name a version while it is being removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from shipyard.errors import UsageError
from shipyard.names import validate_model_name
from shipyard.progress import NullProgress, Progress
from shipyard.repository import ModelRepository
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
        raise UsageError(f"--keep: expected 0 or more versions to keep, got {keep_newest}")
    reasons: dict[int, list[str]] = {v: [] for v in versions}
    for version in sorted(versions)[len(versions) - keep_newest:] if keep_newest else []:
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


def collect_garbage(repo: ModelRepository, name: str, keep_newest: int, *,
                    read_aliases: Callable[[str], dict[str, int]], dry_run: bool = False,
                    progress: Progress = NullProgress()) -> dict[str, Any]:
    """Removes what `plan_gc` says (nothing with `dry_run`); returns the plan as JSON.

    `read_aliases` is asked before anything is removed: if the registry cannot be read, gc
    fails and removes nothing.
    """
    validate_model_name(name)
    with repo.serving_lock(name):
        aliases = read_aliases(name)
        plan = plan_gc(repo.versions(name), current_serving(repo, name), aliases, keep_newest)
        staging = []
        if not dry_run:
            for version in plan.remove:
                with progress.step(f"remove {repo.version_location(name, version)}"):
                    repo.remove_version(name, version)
            # Leftovers of killed exports (no live process owns them) go too.
            staging = [str(p) for p in repo.remove_abandoned_staging(name)]
    return {"name": name, "dry_run": dry_run, "keep_newest": keep_newest,
            "aliases": aliases, **plan.to_json(),
            "removed": [] if dry_run else list(plan.remove), "staging_removed": staging}
