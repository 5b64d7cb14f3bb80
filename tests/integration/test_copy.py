"""`shipyard copy`: a published version from a staging environment (repository + embedded
MLflow store) into a production one, byte for byte, proven and recorded with its lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from support.copy_environments import sqlite_uri, staging_environment

from shipyard.core.manifest import MANIFEST_PATH


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def staging(models, launcher, tmp_path_factory):
    """A staging environment with `churn` version 1 registered, published and `champion`."""
    return staging_environment(models, launcher, tmp_path_factory.mktemp("staging"))


def copy(cli, staging, tmp_path, *extra: str, to_repo: str | None = None):
    production = sqlite_uri(tmp_path / "prod-mlflow")
    result = cli("copy", "churn", "--alias", "champion", "--from-repo", str(staging["repo"]),
                 "--from-tracking-uri", staging["uri"],
                 "--to-repo", to_repo or str(tmp_path / "prod-repo"),
                 "--to-tracking-uri", production, "--json", *extra)
    return result, production


def test_a_champion_is_copied_byte_for_byte_proven_and_recorded_with_its_lineage(
        cli, staging, tmp_path):
    source = staging["registered"]
    staged_before = sorted(p.relative_to(staging["repo"]) for p in staging["repo"].rglob("*"))
    result, production = copy(cli, staging, tmp_path, "--reason", "promote the winner")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["name"], doc["version"], doc["reused"]) == ("churn", 1, False)
    assert doc["fingerprint"] == source.fingerprint
    assert doc["transfer"] == "hard links"  # one file system
    assert doc["aliases"] == {"candidate": 1}

    copied = tmp_path / "prod-repo" / "churn" / "1"
    original = Path(source.path)
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file())
    for relative in files:
        assert (copied / relative).read_bytes() == (original / relative).read_bytes()

    # Proven: both loads answered every warmup request alike.
    assert doc["proof"]["fresh_load"]["outputs_compared"] > 0
    assert doc["proof"]["fresh_load"]["max_abs_error"] == 0.0

    client = client_for(production)
    version = client.get_model_version("churn", "1")
    lineage = json.loads(version.tags["shipyard.copied_from"])
    assert lineage == {"registry": staging["uri"], "name": "churn", "version": 1,
                       "run_id": source.run_id, "fingerprint": source.fingerprint,
                       "repository": str(original)}
    assert version.tags["shipyard.fingerprint"] == source.fingerprint
    assert version.tags["shipyard.published"] == "true"
    assert version.tags["shipyard.serving_version"] == "1"
    assert json.loads(version.tags["shipyard.copy_proof"]) == doc["proof"]
    run = client.get_run(version.run_id)
    source_run = client_for(staging["uri"]).get_run(source.run_id)
    assert run.data.params == source_run.data.params
    assert {k: v for k, v in run.data.metrics.items() if k != "copy_seconds"} == \
        source_run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "shipyard/churn"
    # What MLflow's UI shows first: what was verified, where it came from, where history is.
    assert "**Verified by shipyard**" in version.description
    assert f"Copied from {staging['uri']}: `churn` version 1 (run {source.run_id})" in \
        version.description
    assert f"Repository: `{copied.resolve()}`" in version.description
    assert "`shipyard alias history churn`" in client.get_registered_model("churn").description
    source_description = client_for(staging["uri"]).get_model_version("churn", "1").description
    assert "Parity of `serve` with the source model" in source_description
    assert "Copied from" not in source_description
    # The alias moved through the audited path, with the reason.
    history = cli("alias", "history", "churn", "--tracking-uri", production, "--json")
    assert history.exit_code == 0, history.stderr
    moves = json.loads(history.stdout)
    assert [(m["alias"], m["to"], m["reason"]) for m in moves] == [
        ("candidate", 1, "promote the winner")]
    # Staging is never changed.
    assert sorted(p.relative_to(staging["repo"]) for p in staging["repo"].rglob("*")) == \
        staged_before
    assert str(client_for(staging["uri"]).get_model_version_by_alias(
        "churn", "champion").version) == "1"

    # MLflow's own client loads the copy in production and answers like the source version.
    import mlflow

    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
             os.environ.get("MLFLOW_REGISTRY_URI"))
    try:  # set_registry_uri also sets MLFLOW_REGISTRY_URI, which shipyard reads: restore both
        mlflow.set_registry_uri(production)
        copied_model = mlflow.pyfunc.load_model("models:/churn@candidate")
        mlflow.set_registry_uri(staging["uri"])
        source_model = mlflow.pyfunc.load_model("models:/churn@champion")
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        if saved[2] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = saved[2]
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    got, want = copied_model.predict(x), source_model.predict(x)
    if isinstance(want, dict):
        assert set(got) == set(want)
        got, want = [got[k] for k in sorted(got)], [want[k] for k in sorted(want)]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    again, _ = copy(cli, staging, tmp_path)  # the same command again: reused, nothing new
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["reused"] is True
    assert [str(v.version) for v in client.search_model_versions("name='churn'")] == ["1"]


def test_a_source_whose_files_changed_is_refused_with_exit_4_naming_the_file(
        cli, staging, tmp_path):
    import shutil

    broken = tmp_path / "broken-staging"
    shutil.copytree(staging["repo"], broken)
    variables = broken / "churn" / "1" / "variables" / "variables.data-00000-of-00001"
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0xFF
    variables.write_bytes(bytes(data))
    production = sqlite_uri(tmp_path / "prod-mlflow")
    result = cli("copy", "churn", "--version", "1", "--from-repo", str(broken),
                 "--from-tracking-uri", staging["uri"], "--to-repo",
                 str(tmp_path / "prod-repo"), "--to-tracking-uri", production)
    assert result.exit_code == 4, result.stderr
    assert "does not match its manifest; nothing was copied" in result.stderr
    assert "variables/variables.data-00000-of-00001: content differs" in result.stderr
    assert not (tmp_path / "prod-repo" / "churn").exists() or not any(
        (tmp_path / "prod-repo" / "churn").glob("[0-9]*"))


@pytest.mark.parametrize("arguments, message", [
    (("--alias", "nope"), r"--alias: 'churn' has no alias 'nope' in the source registry .*"
                          r"its aliases: \{'candidate': 1, 'champion': 1\}"),
    (("--version", "7"), r"--version: 'churn' has no version 7 in the source registry"),
    ((), r"--version: give exactly one of --version N and --alias ALIAS"),
    (("--version", "1", "--to-name", "../x"), r"--to-name: '../x' is not a valid model name"),
])
def test_a_source_that_cannot_be_named_is_exit_2(cli, staging, tmp_path, arguments, message):
    import re

    result = cli("copy", "churn", *arguments, "--from-repo", str(staging["repo"]),
                 "--from-tracking-uri", staging["uri"], "--to-repo", str(tmp_path / "p"),
                 "--to-tracking-uri", sqlite_uri(tmp_path / "prod"))
    assert result.exit_code == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "p").exists()


def test_a_copy_into_an_object_store_repository_under_another_name(cli, staging, tmp_path):
    import fsspec

    # As the synopsis reads: --alias champion names the source, a second --alias the
    # destination's alias.
    result, production = copy(cli, staging, tmp_path, "--to-name", "churn-prod", "--alias",
                              "prod-candidate", to_repo="memory://prod-repo")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["name"], doc["version"]) == ("churn-prod", 1)
    assert doc["aliases"] == {"prod-candidate": 1}
    assert doc["path"] == "memory://prod-repo/churn-prod/1"
    fs, path = fsspec.core.url_to_fs(doc["path"])
    manifest = json.loads(fs.cat_file(f"{path}/{MANIFEST_PATH}"))
    assert manifest["fingerprint"] == staging["registered"].fingerprint
    lineage = json.loads(client_for(production).get_model_version("churn-prod", "1").tags[
        "shipyard.copied_from"])
    assert (lineage["name"], lineage["version"]) == ("churn", 1)


def test_a_lost_answer_to_the_version_create_is_completed_by_the_same_command(
        cli, staging, proxy, tmp_path, monkeypatch):
    """The destination's MLflow (a real server, behind the fault proxy) registers the
    version, and its answer is lost: the client's retry makes a second version. The copy ends
    with one version, and so does the same command run again."""
    from support.register_faults import inconsistencies

    name = "churn-lost"
    arguments = ["copy", "churn", "--version", "1", "--from-repo", str(staging["repo"]),
                 "--from-tracking-uri", staging["uri"], "--to-repo", str(tmp_path / "repo"),
                 "--to-tracking-uri", proxy.uri, "--to-name", name, "--json"]
    proxy.arm("drop", matching="/model-versions/create")
    first = cli(*arguments)
    assert proxy.fired, "the copy never created a version"
    proxy.arm(None)
    again = cli(*arguments)
    assert again.exit_code == 0, (first.stderr, again.stderr)
    assert inconsistencies(proxy.uri, name, tmp_path / "repo") == []
    version = client_for(proxy.uri).get_model_version(name, "1")
    assert json.loads(version.tags["shipyard.copied_from"])["version"] == 1


def test_copies_of_one_version_at_once_end_with_one_destination_version(
        staging, mlflow_server, launcher, tmp_path):
    import threading

    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.copy import CopyRequest, copy_version

    name = "churn-race"
    request = CopyRequest(name="churn", version=1, from_repo=str(staging["repo"]),
                          to_repo=str(tmp_path / "repo"), to_name=name,
                          source=RegistryLocation.resolve(staging["uri"], staging["uri"]),
                          destination=RegistryLocation.resolve(mlflow_server.uri,
                                                               mlflow_server.uri))
    results, errors = [], []

    def run() -> None:
        try:
            results.append(copy_version(request, start_check=launcher.start))
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert sorted(r.registered.version for r in results) == [1, 1, 1]
    assert sorted(r.registered.reused for r in results) == [False, True, True]
    versions = client_for(mlflow_server.uri).search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert sorted(p.name for p in (tmp_path / "repo" / name).iterdir()
                  if p.name.isdigit()) == ["1"]


def test_a_repository_that_is_not_the_source_registrys_is_refused(cli, staging, published,
                                                                  tmp_path):
    import shutil

    other = tmp_path / "other-repo" / "churn"
    other.mkdir(parents=True)
    shutil.copytree(published / "m" / "2", other / "1")  # another model, a whole version
    result = cli("copy", "churn", "--version", "1", "--from-repo", str(tmp_path / "other-repo"),
                 "--from-tracking-uri", staging["uri"], "--to-repo", str(tmp_path / "p"),
                 "--to-tracking-uri", sqlite_uri(tmp_path / "prod"))
    assert result.exit_code == 2, result.stderr
    assert "--from-repo: " in result.stderr
    assert "is not that registry's repository" in result.stderr
    assert not (tmp_path / "p").exists()


def test_a_copy_into_its_own_environment_or_onto_champion_is_refused_first(cli, staging,
                                                                           tmp_path):
    same = cli("copy", "churn", "--version", "1", "--from-repo", str(staging["repo"]),
               "--from-tracking-uri", staging["uri"], "--to-repo", str(staging["repo"]),
               "--to-tracking-uri", staging["uri"])
    assert same.exit_code == 2, same.stderr
    assert "--to-tracking-uri: the destination is the source" in same.stderr
    champion = cli("copy", "churn", "--version", "1", "--from-repo", str(staging["repo"]),
                   "--from-tracking-uri", staging["uri"], "--to-repo", str(tmp_path / "p"),
                   "--to-tracking-uri", sqlite_uri(tmp_path / "prod"), "--to-alias",
                   "champion")
    assert champion.exit_code == 2, champion.stderr
    assert "--to-alias: alias 'champion' moves only through a rollout" in champion.stderr
    assert not (tmp_path / "p").exists()


def test_the_same_content_exported_separately_in_the_destination_is_not_taken_for_a_copy(
        cli, staging, models, launcher, tmp_path):
    """A fingerprint names content, not bytes: production registered the same model itself."""
    from support.copy_environments import staging_environment

    production = staging_environment(models, launcher, tmp_path / "production")
    result = cli("copy", "churn", "--version", "1", "--from-repo", str(staging["repo"]),
                 "--from-tracking-uri", staging["uri"], "--to-repo", str(production["repo"]),
                 "--to-tracking-uri", production["uri"])
    assert result.exit_code == 4, result.stderr
    assert ("already holds this content as version 1 of 'churn'" in result.stderr
            and "from another export (same fingerprint, other bytes)" in result.stderr)
    versions = client_for(production["uri"]).search_model_versions("name='churn'")
    assert [str(v.version) for v in versions] == ["1"]
    assert "shipyard.copied_from" not in versions[0].tags


def test_a_copy_between_two_mlflow_servers(cli, staging, mlflow_server, tmp_path):
    """Both registries behind real `mlflow server` processes: staging's store served by a
    second server, production the session's."""
    from support.mlflow_server import MlflowServer

    source_server = MlflowServer(Path(staging["uri"].removeprefix("sqlite:///")).parent)
    try:
        result = cli("copy", "churn", "--alias", "champion", "--from-repo", str(staging["repo"]),
                     "--from-tracking-uri", source_server.uri, "--to-repo",
                     str(tmp_path / "repo"), "--to-tracking-uri", mlflow_server.uri,
                     "--to-name", "churn-served", "--json")
    finally:
        source_server.stop()
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["copied_from"]["registry"] == source_server.uri
    assert doc["fingerprint"] == staging["registered"].fingerprint
    version = client_for(mlflow_server.uri).get_model_version("churn-served",
                                                              str(doc["version"]))
    assert json.loads(version.tags["shipyard.copied_from"])["run_id"] == \
        staging["registered"].run_id
    assert version.tags["shipyard.published"] == "true"


def test_a_copy_within_one_object_store_is_made_server_side(cli, staging, tmp_path):
    """staging (local) -> memory://mid (a first copy) -> memory://end: the second copy's
    files are copied inside the store, and still verified against the manifest."""
    import fsspec

    mid_uri, end_uri = sqlite_uri(tmp_path / "mid"), sqlite_uri(tmp_path / "end")
    first = cli("copy", "churn", "--version", "1", "--from-repo", str(staging["repo"]),
                "--from-tracking-uri", staging["uri"], "--to-repo", "memory://mid-repo",
                "--to-tracking-uri", mid_uri, "--json")
    assert first.exit_code == 0, first.stderr
    second = cli("copy", "churn", "--version", "1", "--from-repo", "memory://mid-repo",
                 "--from-tracking-uri", mid_uri, "--to-repo", "memory://end-repo",
                 "--to-tracking-uri", end_uri, "--json")
    assert second.exit_code == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["transfer"] == "downloaded for the proof; copied server-side in the store"
    assert doc["fingerprint"] == staging["registered"].fingerprint
    fs = fsspec.filesystem("memory")
    mid, end = "/mid-repo/churn/1", "/end-repo/churn/1"
    names = sorted(p.removeprefix(mid) for p in fs.find(mid))
    assert names == sorted(p.removeprefix(end) for p in fs.find(end))
    for name in names:
        assert fs.cat_file(end + name) == fs.cat_file(mid + name)
