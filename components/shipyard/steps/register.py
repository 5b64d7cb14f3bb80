"""`shipyard register`: export and verify to staging (the same steps as `shipyard export`),
record an MLflow run and registered model version N, publish <repo>/<name>/N, point
`candidate` at N.

Order, and why a re-run always completes what a killed or failed one left:
- MLflow is checked before anything is exported; if it is unreachable, nothing is published.
- The run is created RUNNING and logged; the version is registered from it (tagged
  shipyard.published=false, with the fingerprint) BEFORE it is published, because MLflow
  picks N; then the run gets shipyard.serving_version=N and is finished.
- The directory N is published, then the published tag turns true.
- `candidate` moves to N with its audit record (intent first: shipyard.steps.alias).
- Every run then ends in `_complete`, which reads the version and the run and writes only
  what is missing: the tags, the run's FINISHED status, the runs of killed attempts marked
  FAILED, versions duplicated by a retried request deleted, `candidate` at N with its record.
  A re-run of the same content finds version N by its fingerprint and goes through the same
  completion (publishing first when the version is not published yet), so whatever request
  an earlier attempt died at, the end state is the same. `reused` says only that the
  version was already published before this run.
- Which version a content uses when registrations of it run at once (one version per
  content, published by one of them, reused by the others; what happens when one dies
  while its version is pending): steps.versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shipyard.core.audit import AliasMove
from shipyard.core.descriptions import lineage, model_description, version_description
from shipyard.core.errors import VersionExistsError
from shipyard.core.manifest import MANIFEST_PATH, Manifest
from shipyard.core.names import validate_model_name
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.vocabulary import (
    CANDIDATE,
    COLLECTIONS_TAG,
    COPIED_FROM_TAG,
    ENDPOINTS_TAG,
    FINGERPRINT_TAG,
    PIPELINE_RUN_TAG,
    PUBLISHED_TAG,
    SERVING_VERSION_TAG,
)
from shipyard.exporter.runtime import choose_runtime
from shipyard.exporter.verifier import start_verifier
from shipyard.registry.client import ModelRegistry, RegistryLocation, to_json_tag
from shipyard.repository import open_repository
from shipyard.steps.alias import point_alias
from shipyard.steps.export import ExportRequest, VerifierLauncher, check_compatibility, stage_export
from shipyard.steps.versions import WAIT_TIMEOUT_S, choose_version, registration


@dataclass(frozen=True)
class RunRecord:
    """What a registration records besides the version's own tags, when it is not an export's
    (a copy's: the source run's params and metrics, its lineage, the alias it moves)."""

    params: dict[str, str] | None = None  # None: the manifest's (flatten_params)
    metrics: dict[str, float] | None = None  # None: the export's (run_metrics)
    tags: dict[str, str] = field(default_factory=dict)  # on the run and the version
    alias: str = CANDIDATE
    reason: str | None = None  # the alias move's; None: "registered by shipyard register"


@dataclass
class RegisterResult:
    name: str
    version: int
    run_id: str
    fingerprint: str
    reused: bool
    path: str  # the version directory: an absolute path or a URL
    aliases: dict[str, int] = field(default_factory=dict)
    # The audit record of the alias move this run made; None when the alias was there
    # already. Not in the result document: notifications announce it (alias.moved).
    alias_move: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id,
                "fingerprint": self.fingerprint, "reused": self.reused,
                "path": self.path, "aliases": self.aliases}


def register_model(request: ExportRequest, location: RegistryLocation, *,
                   pipeline_run_id: str | None = None, progress: Progress = NullProgress(),
                   launch_verifier: VerifierLauncher = start_verifier,
                   wait_timeout_s: float = WAIT_TIMEOUT_S) -> RegisterResult:
    from shipyard.exporter.source import check_imports, check_model_path

    validate_model_name(request.name)
    choose_runtime(request.serving_runtime)  # a bad value fails before anything starts
    check_model_path(request.model)
    check_imports(request.imports)
    # Started first, so its TensorFlow import overlaps MLflow's import and the export.
    verifier = launch_verifier()
    try:
        registry = ModelRegistry(location)
        with progress.step(f"check MLflow at {location.tracking_uri}"):
            registry.check_reachable()
        repo = open_repository(request.repo)
        with repo.create_staging(request.name) as staging:
            manifest, timings = stage_export(request, repo, staging, verifier, progress)
            return register_staged(registry, repo, request, staging, manifest, timings,
                                   pipeline_run_id=pipeline_run_id, progress=progress,
                                   wait_timeout_s=wait_timeout_s)
    finally:
        verifier.close()


def register_staged(registry: ModelRegistry, repo: ModelRepository, request: ExportRequest,
                    staging: Any, manifest: Manifest, timings: dict[str, float], *,
                    pipeline_run_id: str | None = None,
                    progress: Progress = NullProgress(),
                    wait_timeout_s: float = WAIT_TIMEOUT_S,
                    record: RunRecord = RunRecord()) -> RegisterResult:
    """The MLflow half of `register`, given a verified export in `staging` (its manifest and
    step timings): register (or choose the version that holds this content already), publish,
    complete. Tests drive it directly to sweep faults over every MLflow request without
    exporting again each time; `shipyard copy` drives it with the copied files and the
    source's record (`record`). `request` needs `name` and `allow_breaking` only."""
    fingerprint = manifest.fingerprint

    def create(owner_tags: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        version, run_id = _register(registry, repo, request, manifest, timings, staging.path,
                                    pipeline_run_id, progress, owner_tags, record)
        # What _register just wrote: no need to read it back.
        return version, run_id, {**_tags(manifest, pipeline_run_id), **record.tags,
                                 **owner_tags, SERVING_VERSION_TAG: str(version)}

    # The registration stays live (others wait for its pending version) until it completes.
    with registration() as owner:
        chosen = choose_version(registry, request.name, fingerprint, owner, create,
                                wait_timeout_s=wait_timeout_s, progress=progress)
        version, run_id, version_tags = chosen.version, chosen.run_id, chosen.tags
        if not chosen.published:
            with progress.step(f"publish version {version}"):
                _publish(repo, request, staging, version, manifest)
        with progress.step(f"complete version {version} in MLflow"):
            aliases, move = _complete(registry, request.name, version, run_id, fingerprint,
                                version_tags, pipeline_run_id, registered_now=chosen.created,
                                record=record)
            _describe(registry, request.name, version, manifest,
                      repo.version_location(request.name, version), version_tags)
    path = repo.version_location(request.name, version)
    return RegisterResult(request.name, version, run_id, fingerprint, chosen.published, path,
                          aliases, move.to_json() if move is not None else None)


def _register(registry: ModelRegistry, repo: ModelRepository, request: ExportRequest,
              manifest: Manifest, timings: dict[str, float], saved_model_dir: Path,
              pipeline_run_id: str | None, progress: Progress,
              owner_tags: dict[str, str], record: RunRecord) -> tuple[int, str]:
    # MLflow numbers versions; the directory it will name must be free on disk first. A
    # directory whose version MLflow has is no stray: a concurrent registration made both
    # since the number was read (directory N is published only after version N exists).
    expected = registry.latest_version_number(request.name) + 1
    if (repo.version_exists(request.name, expected)
            and registry.find_version(request.name, expected) is None):
        raise VersionExistsError(
            f"{repo.version_location(request.name, expected)} exists but MLflow would register "
            f"this export as version {expected} of {request.name!r}: the repository holds versions "
            "MLflow does not know (made by `shipyard export`?). Use a repository that only "
            "`shipyard register` writes to, so that directory N is registered version N.")
    tags = {**_tags(manifest, pipeline_run_id), **record.tags}
    params = record.params if record.params is not None else flatten_params(manifest)
    metrics = record.metrics if record.metrics is not None else run_metrics(manifest, timings)
    with progress.step("log the MLflow run"):
        run_id, source = registry.log_run(
            request.name, params=params, metrics=metrics,
            tags=tags, saved_model_dir=saved_model_dir,
            manifest_path=saved_model_dir / MANIFEST_PATH,
            spec_text=yaml.safe_dump(manifest.spec, sort_keys=False))
    with progress.step("register the model version"):
        version = registry.create_version(request.name, source=source, run_id=run_id,
                                          tags={**tags, **owner_tags})
    # The run is complete once its version exists; finishing it here, not after publishing,
    # keeps RUNNING for runs an attempt abandoned (fail_abandoned_runs relies on that).
    registry.set_tags(request.name, version, run_id, {SERVING_VERSION_TAG: str(version)})
    registry.finish_run(run_id)
    return version, run_id


def _complete(registry: ModelRegistry, name: str, version: int, run_id: str, fingerprint: str,
              version_tags: dict[str, str], pipeline_run_id: str | None, *,
              registered_now: bool, record: RunRecord = RunRecord()
              ) -> tuple[dict[str, int], AliasMove | None]:
    """Brings version N, its run and `candidate` to the registered state, writing only what
    is missing, so it is cheap after a clean run and repairs any interrupted one. Returns the
    model's aliases afterwards, and the alias move it made (None: none was needed).
    `version_tags`: the version's tags as last read or written; `registered_now`: this
    process created the version (and already dropped duplicates)."""
    wanted = {**record.tags, SERVING_VERSION_TAG: str(version), PUBLISHED_TAG: "true"}
    # The pipeline run id of the registration that made the version stays; only a missing
    # tag (a version registered before the tag was always written) gets this run's.
    wanted[PIPELINE_RUN_TAG] = version_tags.get(PIPELINE_RUN_TAG, pipeline_run_id or "")
    missing = {k: v for k, v in wanted.items() if version_tags.get(k) != v}
    registry.set_version_tags(name, version, missing)
    version_tags.update(missing)

    run = registry.run(run_id)
    run_wanted = {k: version_tags[k] for k in (FINGERPRINT_TAG, ENDPOINTS_TAG, COLLECTIONS_TAG,
                                                *wanted) if k in version_tags}
    registry.set_run_tags(run_id, {k: v for k, v in run_wanted.items()
                                   if run.data.tags.get(k) != v})
    if run.info.status != "FINISHED":
        registry.finish_run(run_id)
    registry.fail_abandoned_runs(run.info.experiment_id, fingerprint, keep=run_id)
    if not registered_now:  # an attempt killed inside create_version's retry left them
        registry.drop_duplicates(name, run_id, keep=version)

    return point_alias(registry, name, registry.registered_model(name), record.alias, version,
                       version_tags,
                       reason=record.reason or f"registered by shipyard register ({fingerprint})",
                       pipeline_run_id=pipeline_run_id)


def _describe(registry: ModelRegistry, name: str, version: int, manifest: Manifest,
              location: str, version_tags: dict[str, str]) -> None:
    """The version's and the model's MLflow descriptions, written when they differ (after
    the alias, so a registration cut off before this is complete in everything else)."""
    wanted = version_description(manifest, location, lineage(version_tags, COPIED_FROM_TAG))
    if (registry.version(name, version).description or "") != wanted:
        registry.describe_version(name, version, wanted)
    about = model_description(name)
    if (registry.registered_model(name).description or "") != about:
        registry.describe_model(name, about)


def _publish(repo: ModelRepository, request: ExportRequest, staging: Any, version: int,
             manifest: Manifest) -> None:
    on_disk = repo.read_manifest(request.name, version)
    if on_disk is not None and on_disk.fingerprint == manifest.fingerprint:
        return  # an earlier run published it and died before tagging: nothing to write
    try:
        repo.publish(staging, request.name, version,
                     precheck=lambda: check_compatibility(repo, request, manifest.signatures))
    except VersionExistsError:
        # Published meanwhile by another registration of this content (one that took the
        # version over, or whose owner this run took over from: steps.versions): the same
        # bytes under the same N. Anything else in the way is the error it says.
        on_disk = repo.read_manifest(request.name, version)
        if on_disk is None or on_disk.fingerprint != manifest.fingerprint:
            raise


def _tags(manifest: Manifest, pipeline_run_id: str | None) -> dict[str, str]:
    # pipeline_run_id is always there, empty when none was given: filters and readers can
    # rely on the key (tags.`shipyard.pipeline_run_id` = '' finds manual registrations).
    return {FINGERPRINT_TAG: manifest.fingerprint,
            ENDPOINTS_TAG: ",".join(manifest.endpoint_names()),
            COLLECTIONS_TAG: to_json_tag(manifest.variable_collections),
            PUBLISHED_TAG: "false",
            PIPELINE_RUN_TAG: pipeline_run_id or ""}


def flatten_params(manifest: Manifest) -> dict[str, str]:
    """The spec flattened to dotted keys, plus the source model."""
    params: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(i, (dict, list)) for i in value):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        else:
            params[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("spec", manifest.spec)
    walk("source", manifest.source)
    return params


def run_metrics(manifest: Manifest, timings: dict[str, float]) -> dict[str, float]:
    metrics = {"export_seconds": timings["export_seconds"],
               "verify_seconds": timings["verify_seconds"],
               "saved_model_bytes": float(sum(f["size"] for f in manifest.files)),
               "warmup_records": float(manifest.warmup_records)}
    for endpoint, figures in manifest.parity.items():
        metrics[f"parity_max_abs_error.{endpoint}"] = figures["max_abs_error"]
    return metrics
