"""`shipyard push`, `status` and `gc` on real exported versions, against the TF-Serving-protocol
test double (support/tf_serving_double.py) where a server is involved. (Concurrent `shipyard
push` processes: e2e/test_push.py.)"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from support.serving_client import X, predict
from support.versions import add_version, config_of

from shipyard.core.manifest import list_files, read_manifest, write_manifest
from shipyard.serving.config import (
    ModelServing,
    model_serving,
    parse_config,
    render_config,
    with_model,
)


@pytest.fixture
def templates(published):
    """The session's published versions (tests/conftest.py) by test model: tests copy them as
    versions (add_version), never change them."""
    return {"sequential": published / "m" / "1", "sequential_tanh": published / "m" / "2"}


def keras_output(models, kind: str) -> np.ndarray:
    import keras

    return np.asarray(keras.saving.load_model(models.path(kind))(X))


def test_push_without_server_writes_a_proto_config_and_keeps_other_models(cli, templates, repo):
    add_version(repo, "m", 1, templates["sequential"])
    other = with_model(parse_config(""), "other", "/srv/other", ModelServing((7,), {"stable": 7}))
    repo.mkdir(exist_ok=True)
    (repo / "models.config").write_text(render_config(other))

    push = ["push", "--repo", str(repo), "--name", "m", "--version", "1", "--label", "stable"]
    result = cli(*push, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    # Without a server to wait on, the push stops once it has asked for version 1 to load:
    # a polling TF Serving would refuse a label on a version it has not loaded yet.
    assert doc["before"] is None and doc["after"] == {"versions": [1], "labels": {}}
    assert doc["steps"] == 1 and doc["complete"] is False
    human = cli(*push)  # run again, as the message says, once 1 is loaded
    assert human.exit_code == 0, human.stderr
    assert "label stable -> version 1" in human.stdout and "NOT COMPLETE" not in human.stdout
    config = config_of(repo)
    assert model_serving(config, "m") == ModelServing((1,), {"stable": 1})
    assert [m.name for m in config.model_config_list.config] == ["other", "m"]
    assert model_serving(config, "other") == ModelServing((7,), {"stable": 7})
    entry = config.model_config_list.config[1]
    assert entry.base_path == str((repo / "m").resolve())
    assert entry.model_platform == "tensorflow"


def test_label_moves_in_two_steps_on_the_server_and_serves_the_new_version(
        cli, templates, repo, tf_serving, models):
    add_version(repo, "m", 1, templates["sequential"])
    add_version(repo, "m", 2, templates["sequential_tanh"])
    push = ["push", "--repo", str(repo), "--name", "m", "--serving-address", tf_serving.address,
            "--timeout", "60", "--json"]
    first = cli(*push, "--version", "1", "--label", "stable")
    assert first.exit_code == 0, first.stderr
    np.testing.assert_allclose(predict(tf_serving.address, "m", label="stable")[1],
                               keras_output(models, "sequential"), rtol=1e-5, atol=1e-6)
    sent_before = len(tf_serving.reload_requests)

    second = cli(*push, "--version", "2", "--label", "stable")
    assert second.exit_code == 0, second.stderr
    sent = [model_serving(c, "m") for c in tf_serving.reload_requests[sent_before:]]
    assert sent == [ModelServing((1, 2), {"stable": 1}),   # 2 loaded beside 1 first
                    ModelServing((1, 2), {"stable": 2}),   # then the label moves
                    ModelServing((2,), {"stable": 2})]     # then 1 is unloaded
    doc = json.loads(second.stdout)
    assert doc["server"] == {"1": "END", "2": "AVAILABLE"}  # the push waited for the unload
    version, output = predict(tf_serving.address, "m", label="stable")
    assert version == 2
    np.testing.assert_allclose(output, keras_output(models, "sequential_tanh"),
                               rtol=1e-5, atol=1e-6)
    assert model_serving(config_of(repo), "m") == ModelServing((2,), {"stable": 2})


def test_push_json_reports_the_server_after_the_last_step(cli, templates, repo):
    from support.tf_serving_double import TFServingDouble

    add_version(repo, "m", 1, templates["sequential"])
    add_version(repo, "m", 2, templates["sequential_tanh"])
    # TF Serving's default --file_system_poll_wait_seconds: a version dropped from the config
    # is unloaded on the poll after the reload was answered, not before the answer.
    with TFServingDouble(file_system_poll_wait_s=1.0) as server:
        push = ["push", "--repo", str(repo), "--name", "m", "--label", "stable",
                "--serving-address", server.address, "--timeout", "60", "--json"]
        assert cli(*push, "--version", "1").exit_code == 0
        second = cli(*push, "--version", "2")
        assert second.exit_code == 0, second.stderr
        doc = json.loads(second.stdout)
        # What the server does now: 2 serves, 1 (dropped by the last step) is unloaded.
        assert doc["server"] == {"1": "END", "2": "AVAILABLE"}
        assert doc["unloading"] == []


def test_unloads_unfinished_at_the_timeout_are_reported_not_failed(cli, templates, repo,
                                                                   caplog):
    import threading

    from support.tf_serving_double import TFServingDouble

    add_version(repo, "m", 1, templates["sequential"])
    add_version(repo, "m", 2, templates["sequential_tanh"])
    # The poller never runs on its own: the test polls once for each load it allows, and never
    # after the last step, so version 1 is still served when the push's time runs out.
    with TFServingDouble(file_system_poll_wait_s=3600) as server:
        def poll_once_config_has(versions: tuple[int, ...]) -> threading.Thread:
            def run() -> None:
                while (model_serving(server.config, "m") or ModelServing()).versions != versions:
                    time.sleep(0.02)
                server.poll()
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            return thread

        push = ["push", "--repo", str(repo), "--name", "m", "--label", "stable",
                "--serving-address", server.address, "--json"]
        poller = poll_once_config_has((1,))
        assert cli(*push, "--version", "1", "--timeout", "60").exit_code == 0
        poller.join()
        poller = poll_once_config_has((1, 2))  # step 1 of the move: load 2 beside 1
        started = time.monotonic()
        second = cli(*push, "--version", "2", "--timeout", "8")  # loading 2 fits in 8 s
        poller.join()
        assert second.exit_code == 0, second.stderr  # the label did move
        assert time.monotonic() - started < 8 + 10  # the unload wait ended at --timeout
        doc = json.loads(second.stdout)
        assert doc["complete"] is True and doc["after"] == {"versions": [2],
                                                            "labels": {"stable": 2}}
        assert doc["server"] == {"1": "AVAILABLE", "2": "AVAILABLE"}  # as read, said so:
        assert doc["unloading"] == [1]
        # In-process, pytest owns the log handlers; a shell sees this warning on stderr.
        assert "still serves version(s) 1 of m" in caplog.text
        assert predict(server.address, "m", label="stable")[0] == 2


def test_a_version_the_server_cannot_load_is_rolled_back_with_exit_7(cli, templates, repo,
                                                                     tf_serving):
    add_version(repo, "m", 1, templates["sequential"])
    broken = add_version(repo, "m", 2, templates["sequential"])
    # Checksums match (the manifest is rewritten), but TF Serving cannot parse the graph.
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    write_manifest(broken, dataclasses.replace(read_manifest(broken), files=list_files(broken)))
    push = ["push", "--repo", str(repo), "--name", "m", "--serving-address", tf_serving.address,
            "--timeout", "60"]
    assert cli(*push, "--version", "1", "--label", "stable").exit_code == 0
    before_text = (repo / "models.config").read_text()

    failed = cli(*push, "--version", "2", "--label", "stable")
    assert failed.exit_code == 7, failed.stderr
    assert "failed to load m version 2" in failed.stderr
    assert "previous config of m was restored" in failed.stderr
    assert (repo / "models.config").read_text() == before_text
    assert model_serving(tf_serving.reload_requests[-1], "m") == ModelServing((1,),
                                                                             {"stable": 1})
    assert predict(tf_serving.address, "m", label="stable")[0] == 1


def test_a_load_slower_than_the_timeout_is_rolled_back(cli, templates, repo):
    from support.tf_serving_double import TFServingDouble

    add_version(repo, "m", 1, templates["sequential"])
    with TFServingDouble(load_delay_s=3.0) as server:
        failed = cli("push", "--repo", str(repo), "--name", "m", "--version", "1", "--label",
                     "canary", "--serving-address", server.address, "--timeout", "0.5")
        assert failed.exit_code == 7, failed.stderr
        assert "timed out after 0.5 s" in failed.stderr and "raise --timeout" in failed.stderr
        assert f"restored in {repo.resolve() / 'models.config'} and on TF Serving" in \
            failed.stderr
        assert model_serving(config_of(repo), "m") is None
        assert model_serving(server.reload_requests[-1], "m") is None


def test_an_unreachable_server_changes_nothing(cli, templates, repo):
    add_version(repo, "m", 1, templates["sequential"])
    failed = cli("push", "--repo", str(repo), "--name", "m", "--version", "1", "--label",
                 "stable", "--serving-address", "127.0.0.1:9", "--timeout", "5")
    assert failed.exit_code == 7
    assert "cannot read model status at TF Serving 127.0.0.1:9" in failed.stderr
    assert not (repo / "models.config").exists()


def test_unpublished_or_corrupt_versions_are_refused_with_exit_2(cli, templates, repo):
    version = add_version(repo, "m", 1, templates["sequential"])
    push = ["push", "--repo", str(repo), "--name", "m", "--label", "stable"]
    missing = cli(*push, "--version", "5")
    assert missing.exit_code == 2
    assert "--version 5:" in missing.stderr and "published versions: 1" in missing.stderr
    variables = next((version / "variables").glob("*.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    variables.write_bytes(bytes(data))
    corrupt = cli(*push, "--version", "1")
    assert corrupt.exit_code == 2
    assert f"variables/{variables.name}: content differs from shipyard.json" in corrupt.stderr
    assert not (repo / "models.config").exists()
    bad_address = cli(*push, "--version", "1", "--serving-address", "no-port")
    assert bad_address.exit_code == 2 and "--serving-address: expected HOST:PORT" in \
        bad_address.stderr


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory):
    """An embedded (SQLite) MLflow registry shared by this module's tests."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def register_versions(uri: str, name: str, versions: list[int], aliases: dict[str, int]):
    """Registry set-up for gc/status: versions and aliases as `shipyard register` leaves them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    for version in versions:
        client.create_model_version(name, source=f"/nowhere/{name}/{version}")
    for alias, version in aliases.items():
        client.set_registered_model_alias(name, alias, str(version))


def test_gc_keeps_labelled_aliased_and_newest_versions(cli, templates, repo, registry_uri):
    for version in range(1, 8):
        add_version(repo, "g", version, templates["sequential"])
    register_versions(registry_uri, "g", list(range(1, 8)), {"champion": 2, "candidate": 5})
    for _ in range(2):  # without a server: load 3, then (run again) label it
        assert cli("push", "--repo", str(repo), "--name", "g", "--version", "3", "--label",
                   "canary").exit_code == 0
    gc = ["gc", "--repo", str(repo), "--name", "g", "--keep", "1", "--tracking-uri",
          registry_uri, "--json"]

    dry = cli(*gc, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["remove"] == [1, 4, 6] and doc["removed"] == []
    assert doc["keep"]["2"] == ["alias champion"] and doc["keep"]["7"] == ["among the newest 1"]
    assert doc["keep"]["3"] == ["label canary", "loaded by models.config"]
    assert sorted(int(p.name) for p in (repo / "g").iterdir() if p.name.isdigit()) == \
        [1, 2, 3, 4, 5, 6, 7]

    (repo / "g" / ".staging-0123456789ab").mkdir()  # a killed export's leftover
    done = cli(*gc)
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == [1, 4, 6]
    assert json.loads(done.stdout)["staging_removed"] == [str(repo / "g" /
                                                              ".staging-0123456789ab")]
    assert sorted(p.name for p in (repo / "g").iterdir() if not p.name.startswith(".")) == \
        ["2", "3", "5", "7"]


def test_gc_refuses_a_registry_that_does_not_know_the_model(cli, templates, repo, tmp_path):
    for version in (1, 2):
        add_version(repo, "g", version, templates["sequential"])
    gc = ["gc", "--repo", str(repo), "--name", "g", "--keep", "0"]
    wrong = cli(*gc, "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert wrong.exit_code == 2
    assert "the registry has no registered model g" in wrong.stderr
    assert "--no-registry" in wrong.stderr
    assert sorted(p.name for p in (repo / "g").iterdir() if p.name.isdigit()) == ["1", "2"]
    unregistered = cli(*gc, "--no-registry", "--json")
    assert unregistered.exit_code == 0, unregistered.stderr
    assert json.loads(unregistered.stdout)["removed"] == [1, 2]


def test_gc_removes_nothing_when_the_registry_is_unreachable(cli, templates, repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for version in (1, 2):
        add_version(repo, "g", version, templates["sequential"])
    failed = cli("gc", "--repo", str(repo), "--name", "g", "--keep", "0", "--tracking-uri",
                 "http://127.0.0.1:9")
    assert failed.exit_code == 6
    assert "MLflow at http://127.0.0.1:9" in failed.stderr and "unreachable" in failed.stderr
    assert sorted(p.name for p in (repo / "g").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_a_mistyped_repo_or_name_is_refused_and_leaves_nothing(cli, templates, repo, tmp_path):
    add_version(repo, "g", 1, templates["sequential"])
    nowhere = tmp_path / "nowhere"
    for argv, model_dir, missing in (
            (["push", "--repo", str(nowhere), "--name", "g", "--version", "1", "--label",
              "stable"], nowhere / "g", nowhere),
            (["push", "--repo", str(repo), "--name", "gg", "--version", "1", "--label",
              "stable"], repo / "gg", repo / "gg"),
            (["gc", "--repo", str(repo), "--name", "gg", "--keep", "0", "--no-registry"],
             repo / "gg", repo / "gg")):
        result = cli(*argv)
        assert result.exit_code == 2, result.stderr
        assert (f"--name {argv[4]}: the repository {model_dir.parent} has no model "
                f"{argv[4]!r} (no {model_dir}); check --name and --repo") in result.stderr
        assert not missing.exists()  # no directory, no lock file
    assert sorted(p.name for p in repo.iterdir()) == ["g"]


def test_status_shows_disk_labels_aliases_and_server(cli, templates, repo, registry_uri,
                                                     tf_serving, monkeypatch):
    add_version(repo, "s", 1, templates["sequential"])
    add_version(repo, "s", 2, templates["sequential_tanh"])
    register_versions(registry_uri, "s", [1, 2], {"champion": 1, "candidate": 2})
    for version, label in ((1, "stable"), (2, "canary")):
        pushed = cli("push", "--repo", str(repo), "--name", "s", "--version", str(version),
                     "--label", label, "--serving-address", tf_serving.address)
        assert pushed.exit_code == 0, pushed.stderr
    status = ["status", "--repo", str(repo), "--name", "s", "--serving-address",
              tf_serving.address]

    result = cli(*status, "--tracking-uri", registry_uri, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["labels"] == {"canary": 2, "stable": 1} and doc["errors"] == []
    assert doc["aliases"] == {"candidate": 2, "champion": 1}
    rows = {row["version"]: row for row in doc["versions"]}
    assert rows[1]["labels"] == ["stable"] and rows[1]["aliases"] == ["champion"]
    assert rows[2]["labels"] == ["canary"] and rows[2]["aliases"] == ["candidate"]
    assert rows[1]["server"] == rows[2]["server"] == "AVAILABLE"
    assert rows[1]["bytes"] == sum(p.stat().st_size for p in (repo / "s" / "1").rglob("*")
                                   if p.is_file())
    assert rows[2]["fingerprint"] == read_manifest(repo / "s" / "2").fingerprint

    human = cli(*status, "--tracking-uri", registry_uri)
    assert human.exit_code == 0
    rows = {line.split()[0]: line.split() for line in human.stdout.splitlines()[2:]}
    assert rows["1"][3:7] == ["yes", "stable", "champion", "AVAILABLE"]
    assert rows["2"][3:7] == ["yes", "canary", "candidate", "AVAILABLE"]

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    partial = cli(*status, "--tracking-uri", "http://127.0.0.1:9", "--json")
    assert partial.exit_code == 6
    doc = json.loads(partial.stdout)  # what could be read is still reported
    assert doc["aliases"] is None and doc["labels"] == {"canary": 2, "stable": 1}
    assert doc["errors"][0]["source"] == "registry"
    assert "unreachable" in doc["errors"][0]["message"]


def test_status_of_an_unknown_model_names_the_flags(cli, repo, registry_uri):
    result = cli("status", "--repo", str(repo), "--name", "nothing", "--tracking-uri",
                 registry_uri)
    assert result.exit_code == 2
    assert "--name nothing:" in result.stderr and "check --repo and --name" in result.stderr


def test_refusals_list_only_verified_versions(cli, templates, repo, tmp_path):
    add_version(repo, "m", 1, templates["sequential"])
    unpublished = add_version(repo, "m", 2, templates["sequential"])
    (unpublished / "assets.extra" / "shipyard.json").unlink()
    corrupt = add_version(repo, "m", 3, templates["sequential"])
    (corrupt / "saved_model.pb").write_bytes(b"not the model")
    add_version(repo, "m", 4, templates["sequential"])
    (repo / "m" / "5").symlink_to(templates["sequential"])
    push = ["push", "--repo", str(repo), "--name", "m", "--label", "stable"]

    missing = cli(*push, "--version", "2")
    assert missing.exit_code == 2
    assert "(no shipyard.json); verified published versions: 1, 4\n" in missing.stderr + "\n"
    linked = cli(*push, "--version", "5")
    assert linked.exit_code == 2
    assert f"is a symlink to {templates['sequential']}; shipyard serves only version " \
           "directories it published and never follows links" in linked.stderr
    assert "verified versions: 1, 4" in linked.stderr
    assert not (repo / "models.config").exists()

    status = cli("status", "--repo", str(repo), "--name", "m")
    assert status.exit_code == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[2:]
            if line.split()[0].isdigit()}
    assert rows["5"][1] == "symlink"
    assert f"warning: version 5 ({repo / 'm' / '5'}) is a symlink to" in status.stdout
    gc = cli("gc", "--repo", str(repo), "--name", "m", "--keep", "1", "--no-registry")
    assert gc.exit_code == 0, gc.stderr
    assert "skipped 5: a symlink to" in gc.stdout
    assert (repo / "m" / "5").is_symlink() and templates["sequential"].is_dir()
