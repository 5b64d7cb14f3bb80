"""`register` interrupted at its MLflow requests (issue 13): the small model staged once, its
MLflow half run again on a copy, and what a completed registration must look like. Used with
the fault proxy (mlflow_proxy.py) by integration/test_register_kills.py (faults in-process)
and e2e/test_register_kills.py (SIGKILLs of the real command)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from shipyard.core.audit import LOG_TAG_PREFIX
from shipyard.core.manifest import write_manifest
from shipyard.core.progress import NullProgress
from shipyard.core.spec import parse_spec
from shipyard.registry.client import ModelRegistry, RegistryLocation
from shipyard.repository import open_repository
from shipyard.steps.export import ExportRequest, stage_export
from shipyard.steps.register import register_staged
from support.specs import SEQUENTIAL_SPEC


def stage_once(launcher, models, root: Path):
    """The small model exported and verified once: (directory, manifest, timings)."""
    request = ExportRequest(model=models.path("sequential"), spec=parse_spec(SEQUENTIAL_SPEC),
                            repo=root / "repo", name="sweep")
    repo = open_repository(request.repo)
    verifier = launcher()
    try:
        with repo.create_staging(request.name) as staging:
            manifest, timings = stage_export(request, repo, staging, verifier, NullProgress())
            shutil.copytree(staging.path, root / "export")
    finally:
        verifier.close()
    return root / "export", manifest, timings


def register_copy(uri: str, repo_dir: Path, name: str, staged, pipeline_run_id=None,
                  **options):
    """`register` of the staged export as NAME, without exporting again; `options` go to
    register_staged (progress, wait_timeout_s)."""
    export, manifest, timings = staged
    manifest = dataclasses.replace(manifest, name=name)
    request = ExportRequest(model=Path("unused.keras"), spec=parse_spec(SEQUENTIAL_SPEC),
                            repo=repo_dir, name=name)
    repo = open_repository(repo_dir)
    registry = ModelRegistry(RegistryLocation.resolve(uri))
    with repo.create_staging(name) as staging:
        shutil.copytree(export, staging.path, dirs_exist_ok=True)
        write_manifest(staging.path, manifest)
        return register_staged(registry, repo, request, staging, manifest, timings,
                               pipeline_run_id=pipeline_run_id, **options)


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def inconsistencies(uri: str, name: str, repo_dir: Path) -> list[str]:
    """What differs from a completed registration of NAME (empty: consistent)."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    problems: list[str] = []
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return ["no registered model"]
    versions = client.search_model_versions(f"name='{name}'")
    if len(versions) != 1:
        problems.append(f"{len(versions)} versions: {sorted(v.version for v in versions)}")
    if not versions:
        return problems
    version = min(versions, key=lambda v: int(v.version))
    n = version.version
    run = client.get_run(version.run_id)
    for where, tags in (("version", version.tags), ("run", run.data.tags)):
        for key, value in (("shipyard.published", "true"), ("shipyard.serving_version", n)):
            if tags.get(key) != value:
                problems.append(f"{where} tag {key}={tags.get(key)!r}")
        for key in ("shipyard.fingerprint", "shipyard.pipeline_run_id"):
            if key not in tags:
                problems.append(f"{where} tag {key} missing")
    if run.info.status != "FINISHED":
        problems.append(f"run {run.info.status}")
    running = client.search_runs([run.info.experiment_id],
                                 filter_string="attributes.status = 'RUNNING'")
    if running:
        problems.append(f"{len(running)} run(s) left RUNNING")
    if model.aliases.get("candidate") != n:
        problems.append(f"candidate at {model.aliases.get('candidate')}")
    records = [json.loads(model.tags[k]) for k in sorted(model.tags)
               if k.startswith(LOG_TAG_PREFIX)]
    moves = [(r["alias"], r["from"], r["to"], bool(r.get("pending"))) for r in records]
    if moves != [("candidate", None, int(n), False)]:
        problems.append(f"alias records {moves}")
    published = sorted(p.name for p in (repo_dir / name).iterdir()
                       if p.name.isdigit()) if (repo_dir / name).is_dir() else []
    if published != [n] or not (repo_dir / name / n / "saved_model.pb").is_file():
        problems.append(f"directories {published}")
    return problems
