"""The KFP reference pipeline run locally with kfp.local's SubprocessRunner (its compiled forms:
unit/test_kfp_pipeline.py)."""

from __future__ import annotations

import sys

from support.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "pipelines"))


def test_the_reference_pipeline_runs_locally(tmp_path, capsys):
    import kfp_pipeline
    from mlflow import MlflowClient

    from shipyard.serving.config import ModelServing, model_serving, parse_config

    assert kfp_pipeline.main(["--run-locally", "--workdir", str(tmp_path)]) == 0
    assert "version 1 published under" in capsys.readouterr().out
    version_dir = tmp_path / "models" / "demo-model" / "1"
    assert (version_dir / "assets.extra" / "shipyard.json").is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = client.get_model_version("demo-model", "1").tags
    assert tags["shipyard.published"] == "true"
    run_id = tags["shipyard.pipeline_run_id"]  # the job id kfp.local put for the placeholder
    assert run_id and "{{" not in run_id
    config = parse_config((tmp_path / "models" / "models.config").read_text())
    assert model_serving(config, "demo-model") == ModelServing((1,), {})  # loaded; labelled
                                                                          # by the next push
