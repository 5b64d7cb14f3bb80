"""`shipyard register` and `shipyard alias` against a real MLflow server and the embedded store.
(Concurrent `shipyard register` processes: e2e/test_register_concurrency.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.specs import FUNCTIONAL_SPEC, SEQUENTIAL_SPEC

from shipyard.core.errors import VersionExistsError
from shipyard.core.manifest import read_manifest
from shipyard.core.spec import parse_spec
from shipyard.registry.client import RegistryLocation
from shipyard.steps.export import ExportRequest
from shipyard.steps.register import register_model


def spec_file(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_register_records_run_version_tags_and_candidate(cli, models, mlflow_server, tmp_path):
    import mlflow
    import tensorflow as tf

    repo = tmp_path / "repo"
    result = cli("register", str(models.path("functional")), "--spec",
                 spec_file(tmp_path, FUNCTIONAL_SPEC), "--repo", str(repo), "--name", "reg-a",
                 "--tracking-uri", mlflow_server.uri, "--pipeline-run-id", "nightly-42", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # the document alone: MLflow's own prints go to stderr
    assert set(doc) == {"name", "version", "run_id", "fingerprint", "reused", "path", "aliases"}
    assert (doc["name"], doc["version"], doc["reused"]) == ("reg-a", 1, False)
    assert doc["aliases"] == {"candidate": 1}
    version_dir = repo / "reg-a" / "1"
    assert Path(doc["path"]) == version_dir.resolve()
    assert read_manifest(version_dir).fingerprint == doc["fingerprint"]

    client = client_for(mlflow_server.uri)
    version = client.get_model_version("reg-a", "1")
    run = client.get_run(doc["run_id"])
    for tags in (version.tags, run.data.tags):
        assert tags["shipyard.fingerprint"] == doc["fingerprint"]
        assert tags["shipyard.serving_version"] == "1"
        assert tags["shipyard.endpoints"] == "serve"
        assert json.loads(tags["shipyard.variable_collections"])["optimizer_variables"] > 0
        assert tags["shipyard.published"] == "true"
        assert tags["shipyard.pipeline_run_id"] == "nightly-42"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "shipyard/reg-a"
    assert run.data.params["spec.endpoints.0.name"] == "serve"
    assert run.data.params["source.format"] == "keras"
    assert set(run.data.metrics) >= {"export_seconds", "verify_seconds", "saved_model_bytes",
                                     "parity_max_abs_error.serve", "warmup_records"}
    artifacts = {a.path for a in client.list_artifacts(doc["run_id"])}
    assert {"shipyard.json", "spec.yaml"} <= artifacts

    # The MLflow way of loading answers with the default endpoint.
    # (pyfunc loading speaks MLflow's global state, which set_*_uri also writes into
    # os.environ: undo both, or later commands in this process would resolve to this server.)
    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_registry_uri(mlflow_server.uri)
    try:
        loaded = mlflow.pyfunc.load_model("models:/reg-a/1")
        signature = mlflow.models.get_model_info("models:/reg-a/1").signature
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    x = {"x1": np.ones((2, 3), "float32"), "color": np.array([[b"red"], [b"blue"]])}
    predicted = loaded.predict(x)
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in x.items()})
    assert sorted(predicted) == ["probs", "score"]
    for name in predicted:
        np.testing.assert_allclose(predicted[name], served[name].numpy(), atol=1e-6)
    # The MLflow signature is the default endpoint's, tensor by tensor.
    inputs = {spec.name: (spec.type, spec.shape) for spec in signature.inputs.inputs}
    assert inputs == {"x1": (np.dtype("float32"), (-1, 3)), "color": (np.dtype(np.bytes_), (-1, 1))}
    outputs = {spec.name: (spec.type, spec.shape) for spec in signature.outputs.inputs}
    assert outputs == {name: (np.dtype("float32"), (-1, *served[name].shape.as_list()[1:]))
                       for name in served}
    # MLflow checks inputs against it before the model sees them.
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"dtype of input int64 does not match expected dtype "
                                        r"float32"):
        loaded.predict({"x1": np.ones((2, 3), "int64"), "color": x["color"]})

    # A move made without its record (by a shipyard before records were written first, or
    # outside shipyard) is recorded by the next register of that content.
    for key in [k for k in client.get_registered_model("reg-a").tags
                if k.startswith("shipyard.alias_log.")]:
        client.delete_registered_model_tag("reg-a", key)

    # The same content again: reused, nothing new anywhere.
    again = cli("register", str(models.path("functional")), "--spec",
                spec_file(tmp_path, FUNCTIONAL_SPEC), "--repo", str(repo), "--name", "reg-a",
                "--tracking-uri", mlflow_server.uri, "--json")
    assert again.exit_code == 0, again.stderr
    reused = json.loads(again.stdout)
    assert (reused["version"], reused["reused"], reused["run_id"]) == (1, True, doc["run_id"])
    assert sorted(p.name for p in (repo / "reg-a").iterdir() if p.is_dir()) == ["1"]
    assert [v.version for v in client.search_model_versions("name='reg-a'")] == ["1"]
    assert reused["aliases"] == {"candidate": 1}
    recorded = cli("alias", "history", "reg-a", "--tracking-uri", mlflow_server.uri, "--json")
    [move] = json.loads(recorded.stdout)
    assert (move["alias"], move["from"], move["to"]) == ("candidate", None, 1)
    assert move["reason"].startswith("recorded afterwards: candidate was found at 1 without")


def test_alias_moves_are_recorded_and_champion_is_protected(cli, models, mlflow_server,
                                                            tmp_path):
    repo = tmp_path / "repo"
    uri = ("--tracking-uri", mlflow_server.uri)
    first = cli("register", str(models.path("sequential")), "--spec",
                spec_file(tmp_path, SEQUENTIAL_SPEC), "--repo", str(repo), "--name", "reg-b",
                *uri)
    assert first.exit_code == 0, first.stderr
    second = cli("register", str(models.path("sequential_tanh")), "--spec",
                 spec_file(tmp_path, SEQUENTIAL_SPEC), "--repo", str(repo), "--name", "reg-b",
                 *uri, "--json")
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["version"] == 2
    # No --pipeline-run-id: the tag is there all the same, empty.
    client = client_for(mlflow_server.uri)
    version_2 = client.get_model_version("reg-b", "2")
    assert version_2.tags["shipyard.pipeline_run_id"] == ""
    assert client.get_run(version_2.run_id).data.tags["shipyard.pipeline_run_id"] == ""

    canary = cli("alias", "set", "reg-b", "canary", "2", "--reason", "try tanh",
                 "--pipeline-run-id", "run-9", *uri)
    assert canary.exit_code == 0, canary.stderr
    assert "reg-b: canary (unset) -> 2" in canary.stdout

    champion = cli("alias", "set", "reg-b", "champion", "1", "--reason", "by hand", *uri)
    assert champion.exit_code == 2
    assert "alias 'champion' moves only through a rollout" in champion.stderr
    forced = cli("alias", "set", "reg-b", "champion", "1", "--reason", "bootstrap", "--force",
                 *uri, "--json")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(forced.stdout)["to"] == 1

    missing = cli("alias", "set", "reg-b", "canary", "7", "--reason", "x", *uri)
    assert missing.exit_code == 2
    assert "registered model 'reg-b' has no version 7" in missing.stderr

    history = cli("alias", "history", "reg-b", *uri, "--json")
    assert history.exit_code == 0, history.stderr
    moves = [(m["alias"], m["from"], m["to"], m["reason"]) for m in json.loads(history.stdout)]
    assert moves == [("candidate", None, 1, moves[0][3]), ("candidate", 1, 2, moves[1][3]),
                     ("canary", None, 2, "try tanh"), ("champion", None, 1, "bootstrap")]
    assert json.loads(history.stdout)[2]["pipeline_run_id"] == "run-9"
    assert client_for(mlflow_server.uri).get_registered_model("reg-b").aliases == {
        "candidate": "2", "canary": "2", "champion": "1"}
    human = cli("alias", "history", "reg-b", *uri)
    assert "canary     - -> 2" in human.stdout and "(run run-9): try tanh" in human.stdout

    # Intents a killed `alias set` left behind (written as that process would have) are
    # settled by the next read: kept where the alias did move, dropped where it did not.
    from shipyard.core.audit import AliasMove, log_tag, record_value

    def intent(alias, frm, to):
        move = AliasMove(alias=alias, from_version=frm, to_version=to,
                         time="2026-11-29T10:00:00+00:00", user="ci", reason=f"killed {alias}")
        key, _ = log_tag(move)
        client.set_registered_model_tag("reg-b", key, record_value(move.to_json(),
                                                                   pending=True))
        return key

    moved = intent("canary", 2, 1)
    client.set_registered_model_alias("reg-b", "canary", "1")  # killed before the record
    not_moved = intent("shadow", None, 2)  # killed before the alias
    settled = cli("alias", "history", "reg-b", *uri, "--json")
    assert settled.exit_code == 0, settled.stderr
    last = json.loads(settled.stdout)[-1]
    assert (last["alias"], last["from"], last["to"], "pending" in last) == (
        "canary", 2, 1, False)
    assert "shadow" not in settled.stdout
    tags = client.get_registered_model("reg-b").tags
    assert json.loads(tags[moved]) == last and not_moved not in tags


class _FailingPublish:
    """Progress that plants a file where the version directory goes, right before publish: a
    real filesystem failure at the one moment between registration and publication."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir

    def step(self, label: str):
        import contextlib

        if label.startswith("publish version "):
            blocker = self.model_dir / label.removeprefix("publish version ")
            blocker.write_text("in the way")
        return contextlib.nullcontext()


def test_publish_failure_is_completed_by_running_again(launcher, models, mlflow_server, tmp_path):
    repo = tmp_path / "repo"
    request = ExportRequest(model=models.path("sequential"), spec=parse_spec(SEQUENTIAL_SPEC),
                            repo=repo, name="reg-c")
    location = RegistryLocation.resolve(mlflow_server.uri)
    with pytest.raises(VersionExistsError, match=r"reg-c/1 already exists"):
        register_model(request, location, progress=_FailingPublish(repo / "reg-c"),
                       launch_verifier=launcher)
    client = client_for(mlflow_server.uri)
    assert client.get_model_version("reg-c", "1").tags["shipyard.published"] == "false"
    assert client.get_registered_model("reg-c").aliases == {}

    (repo / "reg-c" / "1").unlink()
    result = register_model(request, location, launch_verifier=launcher)
    assert (result.version, result.reused) == (1, False)
    assert client.get_model_version("reg-c", "1").tags["shipyard.published"] == "true"
    assert [v.version for v in client.search_model_versions("name='reg-c'")] == ["1"]
    assert result.aliases == {"candidate": 1}
    assert (repo / "reg-c" / "1" / "saved_model.pb").is_file()


def test_a_stopped_server_fails_with_exit_6_and_publishes_nothing(cli, models, tmp_path,
                                                                  monkeypatch):
    from support.mlflow_server import MlflowServer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path / "short-lived-server")
    repo = tmp_path / "repo"
    try:
        ok = cli("register", str(models.path("sequential")), "--spec",
                 spec_file(tmp_path, SEQUENTIAL_SPEC), "--repo", str(repo), "--name", "reg-d",
                 "--tracking-uri", server.uri)
        assert ok.exit_code == 0, ok.stderr
    finally:
        server.stop()
    down = cli("register", str(models.path("sequential_tanh")), "--spec",
               spec_file(tmp_path, SEQUENTIAL_SPEC), "--repo", str(repo), "--name", "reg-d",
               "--tracking-uri", server.uri)
    assert down.exit_code == 6
    assert f"MLflow at {server.uri}" in down.stderr and "unreachable" in down.stderr
    assert sorted(p.name for p in (repo / "reg-d").iterdir() if p.is_dir()) == ["1"]
    alias = cli("alias", "set", "reg-d", "canary", "1", "--reason", "x",
                "--tracking-uri", server.uri)
    assert alias.exit_code == 6


def test_embedded_store_needs_no_server(cli, models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("register", str(models.path("sequential")), "--spec",
                 spec_file(tmp_path, SEQUENTIAL_SPEC), "--repo", "repo", "--name", "reg-e",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    assert (tmp_path / ".shipyard" / "mlflow.db").is_file()
    # The artifact store is on this file system: the model's files are hard links to the
    # version's, so register writes the SavedModel's bytes once (issue 15).
    version_dir = tmp_path / "repo" / "reg-e" / "1"
    stored = [p for p in (tmp_path / ".shipyard" / "mlartifacts").rglob("*")
              if p.is_file() and "saved_model" in p.parts[:-1]]
    assert {p.relative_to(next(q for q in p.parents if q.name == "saved_model")).as_posix()
            for p in stored} >= {"saved_model.pb", "assets.extra/shipyard.json"}
    for path in stored:
        rel = path.relative_to(next(q for q in path.parents if q.name == "saved_model"))
        assert path.stat().st_ino == (version_dir / rel).stat().st_ino, rel
    history = cli("alias", "history", "reg-e", "--json")
    assert [m["alias"] for m in json.loads(history.stdout)] == ["candidate"]
    # MLFLOW_TRACKING_URI is honoured as MLflow users expect.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    elsewhere = cli("alias", "history", "reg-e")
    assert elsewhere.exit_code == 2
    assert "there is no registered model 'reg-e'" in elsewhere.stderr
