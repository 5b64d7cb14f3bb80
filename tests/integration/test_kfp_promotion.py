"""The promotion pipeline (shipyard.demo.promotion_pipeline) run locally with kfp.local's
SubprocessRunner: staging's champion copied into production (two repositories on disk, two
embedded SQLite MLflow stores). The rollout needs a cluster: the pipeline is built without it
here (build_pipeline(rollout=False)). (Its compiled form, with the rollout:
unit/test_kfp_pipeline.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from support.specs import SEQUENTIAL_SPEC


def sqlite_uri(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def test_the_promotion_pipeline_copies_stagings_champion_into_production(
        models, launcher, tmp_path):
    from kfp import local
    from mlflow import MlflowClient

    from shipyard.core.spec import load_spec
    from shipyard.demo.promotion_pipeline import build_pipeline
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import move_alias
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    # Staging: `churn` version 1 registered, published, and champion.
    staging_uri = sqlite_uri(tmp_path / "staging-mlflow")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    staging = RegistryLocation.resolve(staging_uri, staging_uri)
    source = register_model(
        ExportRequest(model=models.path("sequential"), spec=load_spec(spec_path),
                      repo=tmp_path / "staging-repo", name="churn"),
        staging, launch_verifier=launcher)
    move_alias(ModelRegistry(staging), "churn", "champion", source.version,
               reason="won in staging", force=True)

    production_uri = sqlite_uri(tmp_path / "prod-mlflow")
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "pipeline-root"), raise_on_error=True)
    run = build_pipeline(rollout=False)(
        model_name="churn", from_repo=str(tmp_path / "staging-repo"),
        to_repo=str(tmp_path / "prod-repo"), from_tracking_uri=staging_uri,
        to_tracking_uri=production_uri, reason="promote the winner")
    assert run.output == 1

    client = MlflowClient(tracking_uri=production_uri, registry_uri=production_uri)
    version = client.get_model_version_by_alias("churn", "candidate")
    assert str(version.version) == "1"
    lineage = json.loads(version.tags["shipyard.copied_from"])
    assert lineage == {"registry": staging_uri, "name": "churn", "version": 1,
                       "run_id": source.run_id, "fingerprint": source.fingerprint,
                       "repository": source.path}
    assert version.tags["shipyard.fingerprint"] == source.fingerprint
    assert version.tags["shipyard.published"] == "true"
    run_id = version.tags["shipyard.pipeline_run_id"]  # the job id kfp.local put for the
    assert run_id and "{{" not in run_id                # placeholder
    assert (tmp_path / "prod-repo" / "churn" / "1" / "assets.extra" / "shipyard.json").is_file()
    # The copy's Model artifact: the version's files.
    artifact, = (tmp_path / "pipeline-root").rglob("copied")
    assert (artifact / "saved_model.pb").is_file()
    # No rollout task: no canary and no champion in production.
    assert set(client.get_registered_model("churn").aliases) == {"candidate"}
    # Staging is only read.
    staging_client = MlflowClient(tracking_uri=staging_uri, registry_uri=staging_uri)
    assert [str(v.version) for v in staging_client.search_model_versions("name='churn'")] == ["1"]
