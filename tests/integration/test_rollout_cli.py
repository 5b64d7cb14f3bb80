"""The rollout's alias moves through the audited path on a real (embedded, SQLite) MLflow
registry. (The `shipyard rollout` commands over fakes: unit/test_rollout_cli.py.)"""

from __future__ import annotations


def test_rollout_alias_moves_are_audited_in_mlflow(tmp_path):
    from mlflow import MlflowClient

    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import alias_history
    from shipyard.steps.rollout import RegistryAliases

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for version in (1, 2):
        client.create_model_version("m", source=f"/nowhere/{version}",
                                    tags={"shipyard.published": "true"})
    registry = ModelRegistry(RegistryLocation.resolve(uri))
    aliases = RegistryAliases(registry, pipeline_run_id="run-9")
    aliases.set_canary("m", 2, "rollout of version 2 started")
    aliases.move_champion("m", 2, "all 2 step(s) passed their gates", {"error_rate": 0.0})
    aliases.clear_canary("m", "all 2 step(s) passed their gates", {"error_rate": 0.0})
    aliases.clear_canary("m", "again", {})  # nothing to clear: nothing recorded
    moves = alias_history(registry, "m")
    assert [(m["alias"], m["from"], m["to"]) for m in moves] == [
        ("canary", None, 2), ("champion", None, 2), ("canary", 2, None)]
    assert moves[1]["gates"] == {"error_rate": 0.0} and moves[2]["pipeline_run_id"] == "run-9"
    assert {k: int(v) for k, v in client.get_registered_model("m").aliases.items()} == \
        {"champion": 2}
