"""`shipyard register`: export and verify to staging (the same steps as `shipyard export`),
record an MLflow run and registered model version N, publish <repo>/<name>/N, point
`candidate` at N.

Order and failure:
- MLflow is checked before anything is exported; if it is unreachable, nothing is published.
- The version is registered (tagged shipyard.published=false) BEFORE it is published, because
  MLflow picks N; the published tag turns true after the rename. A run that died in between
  is completed by running the same command again: the fingerprint finds version N, which is
  then published as N.
- Content whose fingerprint already has a published version is not registered again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shipyard.aliases import move_alias
from shipyard.errors import VersionExistsError
from shipyard.export.runtime import choose_runtime
from shipyard.export.verifier import start_verifier
from shipyard.flow import ExportRequest, VerifierLauncher, check_compatibility, stage_export
from shipyard.manifest import MANIFEST_PATH
from shipyard.names import validate_model_name
from shipyard.progress import NullProgress, Progress
from shipyard.registry.audit import CANDIDATE, PUBLISHED_TAG
from shipyard.registry.client import ModelRegistry, RegistryLocation, to_json_tag
from shipyard.repository import ModelRepository, open_repository

FINGERPRINT_TAG = "shipyard.fingerprint"
SERVING_VERSION_TAG = "shipyard.serving_version"
ENDPOINTS_TAG = "shipyard.endpoints"
COLLECTIONS_TAG = "shipyard.variable_collections"
PIPELINE_RUN_TAG = "shipyard.pipeline_run_id"


@dataclass
class RegisterResult:
    name: str
    version: int
    run_id: str
    fingerprint: str
    reused: bool
    path: str  # the version directory: an absolute path or a URL
    aliases: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id,
                "fingerprint": self.fingerprint, "reused": self.reused,
                "path": self.path, "aliases": self.aliases}


def register_model(request: ExportRequest, location: RegistryLocation, *,
                   pipeline_run_id: str | None = None, progress: Progress = NullProgress(),
                   launch_verifier: VerifierLauncher = start_verifier) -> RegisterResult:
    from shipyard.export.source import check_model_path

    validate_model_name(request.name)
    choose_runtime(request.serving_runtime)  # a bad value fails before anything starts
    check_model_path(request.model)
    # Started first, so its TensorFlow import overlaps MLflow's import and the export.
    verifier = launch_verifier()
    try:
        registry = ModelRegistry(location)
        with progress.step(f"check MLflow at {location.tracking_uri}"):
            registry.check_reachable()
        repo = open_repository(request.repo)
        with repo.create_staging(request.name) as staging:
            manifest, timings = stage_export(request, repo, staging, verifier, progress)
            fingerprint = manifest["fingerprint"]
            existing = registry.find_by_fingerprint(request.name, fingerprint)
            if existing is not None:
                version = int(existing.version)
                run_id = existing.run_id
                if existing.tags.get(PUBLISHED_TAG) == "true":
                    return _result(registry, request, version, run_id, fingerprint, reused=True)
            else:
                version, run_id = _register(registry, request, manifest, timings, staging.path,
                                            pipeline_run_id, progress)
            with progress.step(f"publish version {version}"):
                _publish(repo, request, staging, version, manifest)
            registry.set_tags(request.name, version, run_id, {PUBLISHED_TAG: "true"})
        move_alias(registry, request.name, CANDIDATE, version,
                   reason=f"registered by shipyard register ({fingerprint})",
                   pipeline_run_id=pipeline_run_id)
        return _result(registry, request, version, run_id, fingerprint, reused=False)
    finally:
        verifier.close()


def _register(registry: ModelRegistry, request: ExportRequest, manifest: dict[str, Any],
              timings: dict[str, float], saved_model_dir: Path, pipeline_run_id: str | None,
              progress: Progress) -> tuple[int, str]:
    # MLflow numbers versions; the directory it will name must be free on disk first.
    repo = open_repository(request.repo)
    expected = registry.latest_version_number(request.name) + 1
    if repo.version_exists(request.name, expected):
        raise VersionExistsError(
            f"{repo.version_location(request.name, expected)} exists but MLflow would register this "
            f"export as version {expected} of {request.name!r}: the repository holds versions "
            "MLflow does not know (made by `shipyard export`?). Use a repository that only "
            "`shipyard register` writes to, so that directory N is registered version N.")
    tags = _tags(manifest, pipeline_run_id)
    with progress.step("log the MLflow run"):
        run_id, source = registry.log_run(
            request.name, params=flatten_params(manifest), metrics=run_metrics(manifest, timings),
            tags=tags, saved_model_dir=saved_model_dir,
            manifest_path=saved_model_dir / MANIFEST_PATH,
            spec_text=yaml.safe_dump(manifest["spec"], sort_keys=False))
    with progress.step("register the model version"):
        version = registry.create_version(request.name, source=source, run_id=run_id,
                                          tags=tags)
    registry.set_tags(request.name, version, run_id, {SERVING_VERSION_TAG: str(version)})
    return version, run_id


def _publish(repo: ModelRepository, request: ExportRequest, staging: Any, version: int,
             manifest: dict[str, Any]) -> None:
    on_disk = repo.read_manifest(request.name, version)
    if on_disk is not None and on_disk.get("fingerprint") == manifest["fingerprint"]:
        return  # an earlier run published it and died before tagging: nothing to write
    repo.publish(staging, request.name, version,
                 precheck=lambda: check_compatibility(repo, request, manifest["signatures"]))


def _result(registry: ModelRegistry, request: ExportRequest, version: int, run_id: str,
            fingerprint: str, *, reused: bool) -> RegisterResult:
    aliases = {alias: int(v) for alias, v in
               registry.registered_model(request.name).aliases.items()}
    path = open_repository(request.repo).version_location(request.name, version)
    return RegisterResult(request.name, version, run_id, fingerprint, reused, path, aliases)


def _tags(manifest: dict[str, Any], pipeline_run_id: str | None) -> dict[str, str]:
    tags = {FINGERPRINT_TAG: manifest["fingerprint"],
            ENDPOINTS_TAG: ",".join(e["name"] for e in manifest["spec"]["endpoints"]),
            COLLECTIONS_TAG: to_json_tag(manifest["variable_collections"]),
            PUBLISHED_TAG: "false"}
    if pipeline_run_id:
        tags[PIPELINE_RUN_TAG] = pipeline_run_id
    return tags


def flatten_params(manifest: dict[str, Any]) -> dict[str, str]:
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

    walk("spec", manifest["spec"])
    walk("source", manifest["source"])
    return params


def run_metrics(manifest: dict[str, Any], timings: dict[str, float]) -> dict[str, float]:
    metrics = {"export_seconds": timings["export_seconds"],
               "verify_seconds": timings["verify_seconds"],
               "saved_model_bytes": float(sum(f["size"] for f in manifest["files"])),
               "warmup_records": float(manifest["warmup_records"])}
    for endpoint, figures in manifest["parity"].items():
        metrics[f"parity_max_abs_error.{endpoint}"] = figures["max_abs_error"]
    return metrics
