"""`shipyard reconcile` against a real MLflow server (the session's), real version directories
(copies of the session's published versions) and the TF Serving double: each kind of drift is
made on purpose, the way it happens (a hand-edited models.config, a tag deleted with
MlflowClient, a directory removed or added, a flipped byte, an alias moved, a server left on a
version the config dropped), and checked by kind and exit code; --fix is checked afterwards
with MlflowClient and by reading models.config."""

from __future__ import annotations

import json
import uuid

import pytest
from support.versions import add_version, config_of

from shipyard.core.manifest import read_manifest
from shipyard.serving.client import ServingClient
from shipyard.serving.config import ModelServing, model_serving, render_config, with_model

ITEM_KEYS = {"kind", "subject", "says", "fixable", "fix"}


@pytest.fixture
def templates(published):
    """The session's published versions (tests/conftest.py): copied, never changed."""
    return {1: published / "m" / "1", 2: published / "m" / "2"}


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_tags(version_dir, version: int) -> dict[str, str]:
    """The version tags `shipyard register` leaves (test_register.py checks them on a real
    registration): what the manifest says, the serving version, published."""
    manifest = read_manifest(version_dir)
    return {"shipyard.fingerprint": manifest.fingerprint,
            "shipyard.endpoints": ",".join(e["name"] for e in manifest.spec["endpoints"]),
            "shipyard.variable_collections": json.dumps(manifest.variable_collections,
                                                        sort_keys=True, separators=(",", ":")),
            "shipyard.serving_version": str(version), "shipyard.published": "true",
            "shipyard.pipeline_run_id": ""}


def write_config(repo, name: str, versions: tuple[int, ...], labels: dict[str, int]) -> None:
    """models.config edited by hand: NAME's entry replaced."""
    from shipyard.serving.config import parse_config

    path = repo / "models.config"
    current = parse_config(path.read_text()) if path.exists() else parse_config("")
    path.write_text(render_config(with_model(current, name, str((repo / name).resolve()),
                                             ModelServing(versions, labels))))


class Setup:
    """Model NAME as register and push leave it: versions 1 and 2 published and registered
    with their tags; champion 1, canary 2, candidate 2; models.config loads 1 (stable) and 2
    (canary), pushed onto `server` when there is one."""

    def __init__(self, cli, templates, repo, uri: str, server=None):
        self.cli, self.repo, self.uri, self.server = cli, repo, uri, server
        self.name = f"rc-{uuid.uuid4().hex[:8]}"
        self.client = client_for(uri)
        self.client.create_registered_model(self.name)
        for version in (1, 2):
            directory = add_version(repo, self.name, version, templates[version])
            created = self.client.create_model_version(
                self.name, source=f"s3://nowhere/{self.name}/{version}",
                tags=register_tags(directory, version))
            assert int(created.version) == version
        for alias, version in (("champion", 1), ("canary", 2), ("candidate", 2)):
            self.client.set_registered_model_alias(self.name, alias, str(version))
        if server is None:
            write_config(repo, self.name, (1, 2), {"stable": 1, "canary": 2})
        else:
            for version, label in ((1, "stable"), (2, "canary")):
                pushed = cli("push", "--repo", str(repo), "--name", self.name, "--version",
                             str(version), "--label", label, "--serving-address",
                             server.address, "--timeout", "60")
                assert pushed.exit_code == 0, pushed.stderr

    def reconcile(self, *args: str, servers: bool = True):
        argv = ["reconcile", "--repo", str(self.repo), "--name", self.name,
                "--tracking-uri", self.uri, *args]
        if servers and self.server is not None:
            argv += ["--server", self.server.address]
        return self.cli(*argv)

    def document(self, *args: str, code: int, servers: bool = True) -> dict:
        result = self.reconcile("--json", *args, servers=servers)
        assert result.exit_code == code, result.stdout + result.stderr
        doc = json.loads(result.stdout)  # stdout holds the document alone
        assert set(doc) == {"name", "in_sync", "drift", "fixed"}
        assert doc["name"] == self.name and doc["in_sync"] is (not doc["drift"])
        for item in doc["drift"] + doc["fixed"]:
            assert set(item) == ITEM_KEYS and item["fix"]
        return doc

    def serving(self) -> ModelServing | None:
        return model_serving(config_of(self.repo), self.name)

    def tags(self, version: int) -> dict[str, str]:
        return self.client.get_model_version(self.name, str(version)).tags


def kinds(items: list[dict]) -> dict[str, bool]:
    """{kind: fixable} of the items (each kind once in these tests)."""
    found = {item["kind"]: item["fixable"] for item in items}
    assert len(found) == len(items), items
    return found


@pytest.fixture
def setup(cli, templates, repo, mlflow_server):
    return Setup(cli, templates, repo, mlflow_server.uri)


def test_a_synced_model_exits_0_with_and_without_a_server(cli, templates, repo, mlflow_server,
                                                          tf_serving):
    synced = Setup(cli, templates, repo, mlflow_server.uri, tf_serving)
    assert synced.document(code=0) == {"name": synced.name, "in_sync": True, "drift": [],
                                       "fixed": []}
    assert synced.document(code=0, servers=False)["in_sync"] is True
    human = synced.reconcile()
    assert human.exit_code == 0, human.stderr
    assert human.stdout.strip() == f"{synced.name}: in sync"
    fixed = synced.document("--fix", code=0)  # nothing to repair: nothing changes
    assert fixed["fixed"] == [] and synced.serving() == ModelServing((1, 2), {"stable": 1,
                                                                              "canary": 2})


def _stable_edited_to_2(s: Setup) -> None:
    write_config(s.repo, s.name, (1, 2), {"stable": 2, "canary": 2})


def _champion_moved_to_2(s: Setup) -> None:
    s.client.set_registered_model_alias(s.name, "champion", "2")


def _canary_alias_moved_to_1(s: Setup) -> None:
    s.client.set_registered_model_alias(s.name, "canary", "1")


def _canary_alias_deleted(s: Setup) -> None:
    s.client.delete_registered_model_alias(s.name, "canary")


def _stable_on_an_unpublished_version(s: Setup) -> None:
    write_config(s.repo, s.name, (2, 7), {"stable": 7, "canary": 2})


def _stable_not_loaded(s: Setup) -> None:
    write_config(s.repo, s.name, (2,), {"stable": 1, "canary": 2})


def _canary_label_dropped_by_hand(s: Setup) -> None:
    s.client.delete_registered_model_alias(s.name, "canary")
    write_config(s.repo, s.name, (1, 2), {"stable": 1})


def _fingerprint_tag_deleted(s: Setup) -> None:
    s.client.delete_model_version_tag(s.name, "2", "shipyard.fingerprint")


def _published_tag_false(s: Setup) -> None:
    s.client.set_model_version_tag(s.name, "2", "shipyard.published", "false")


def _fingerprint_tag_edited(s: Setup) -> None:
    s.client.set_model_version_tag(s.name, "1", "shipyard.fingerprint", "sha256:other")


def _directory_2_removed(s: Setup) -> None:
    import shutil

    shutil.rmtree(s.repo / s.name / "2")


def _directory_3_added(s: Setup) -> None:
    add_version(s.repo, s.name, 3, s.repo / s.name / "1")


def _byte_flipped_in_version_1(s: Setup) -> None:
    variables = next((s.repo / s.name / "1" / "variables").glob("*.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    variables.write_bytes(bytes(data))


def _alias_on_an_unpublished_registry_version(s: Setup) -> None:
    s.client.create_model_version(s.name, source="s3://nowhere/3")  # no directory, never published
    s.client.set_registered_model_alias(s.name, "candidate", "3")


@pytest.mark.parametrize(("make", "expected"), [
    (_stable_edited_to_2, {"champion_stable": True}),
    (_champion_moved_to_2, {"champion_stable": True}),
    (_canary_alias_moved_to_1, {"canary_label": True}),
    (_canary_alias_deleted, {"canary_label": True}),
    (_stable_on_an_unpublished_version, {"champion_stable": True, "label_unpublished": True}),
    (_stable_not_loaded, {"label_not_loaded": True}),
    (_canary_label_dropped_by_hand, {"unlabelled_version": True}),
    (_fingerprint_tag_deleted, {"tags_missing": True}),
    (_published_tag_false, {"tags_missing": True}),
    (_fingerprint_tag_edited, {"tags_differ": False}),
    (_directory_2_removed, {"label_unpublished": False, "registered_without_directory": False}),
    (_directory_3_added, {"directory_unregistered": False}),
    (_byte_flipped_in_version_1, {"checksum_failed": False}),
    (_alias_on_an_unpublished_registry_version, {"alias_unpublished": False}),
], ids=lambda value: value.__name__.strip("_") if callable(value) else "")
def test_each_drift_is_reported_with_its_kind_and_exit_10(setup, make, expected):
    make(setup)
    doc = setup.document(code=10)
    assert kinds(doc["drift"]) == expected
    assert doc["fixed"] == []


def test_items_say_what_each_side_says(setup):
    _champion_moved_to_2(setup)
    _byte_flipped_in_version_1(setup)
    _fingerprint_tag_deleted(setup)
    drift = {item["kind"]: item for item in setup.document(code=10)["drift"]}
    champion = drift["champion_stable"]
    assert champion["subject"] == "label stable"
    assert champion["says"] == {"registry": {"alias": "champion", "version": 2},
                                "config": {"label": "stable", "version": 1}}
    assert "--fix moves label stable to version 2" in champion["fix"]
    corrupt = drift["checksum_failed"]
    assert corrupt["subject"] == "version 1" and corrupt["fixable"] is False
    assert corrupt["says"]["config"] == {"labels": ["stable"]}
    [problem] = corrupt["says"]["repository"]["problems"]
    assert problem.startswith("variables/variables.data-") and \
        problem.endswith(": content differs from shipyard.json")
    assert "move stable to an intact version first" in corrupt["fix"]
    tags = drift["tags_missing"]
    assert tags["says"]["registry"] == {"version": 2, "tags": {"shipyard.fingerprint": None}}
    assert tags["says"]["repository"]["tags"] == {
        "shipyard.fingerprint": read_manifest(setup.repo / setup.name / "2").fingerprint}

    human = setup.reconcile()
    assert human.exit_code == 10
    assert human.stdout.startswith(f"{setup.name}: 3 drift item(s), 2 fixable\n")
    assert "- champion_stable (label stable) [fixable]\n" in human.stdout
    assert "- checksum_failed (version 1)\n" in human.stdout
    assert f"error: {setup.name}: 3 drift item(s) remain, 2 of them fixable: run with --fix" \
        in human.stderr


def test_fix_repairs_labels_on_the_server_and_tags_and_leaves_the_rest(
        cli, templates, repo, mlflow_server, tf_serving):
    s = Setup(cli, templates, repo, mlflow_server.uri, tf_serving)
    _champion_moved_to_2(s)  # stable must follow: fixable
    _canary_alias_deleted(s)  # the canary label goes: fixable
    s.client.delete_model_version_tag(s.name, "1", "shipyard.endpoints")  # fixable
    _directory_3_added(s)  # never deleted: not fixable
    sent = len(tf_serving.reload_requests)

    doc = s.document("--fix", code=10)
    assert kinds(doc["fixed"]) == {"champion_stable": True, "canary_label": True,
                                   "tags_missing": True}
    assert kinds(doc["drift"]) == {"directory_unregistered": False}
    # The registry: the tag completed from the manifest; champion where it was put.
    assert s.tags(1) == register_tags(repo / s.name / "1", 1)
    assert s.client.get_registered_model(s.name).aliases == {"champion": "2", "candidate": "2"}
    # models.config and the server: through push's steps, each one sent and waited for.
    assert s.serving() == ModelServing((2,), {"stable": 2})
    assert [model_serving(c, s.name) for c in tf_serving.reload_requests[sent:]] == [
        ModelServing((1, 2), {"stable": 2, "canary": 2}),  # stable moves onto loaded 2
        ModelServing((2,), {"stable": 2, "canary": 2}),  # 1 is unloaded
        ModelServing((2,), {"stable": 2})]  # canary dropped
    with ServingClient(tf_serving.address) as client:
        assert {v: st["state"] for v, st in client.version_states(s.name).items()} == \
            {1: "END", 2: "AVAILABLE"}
    assert (repo / s.name / "3").is_dir()  # reconcile never deletes a directory

    (repo / s.name / "3").rename(repo / "elsewhere")  # what remained, repaired by hand
    assert s.document(code=0)["in_sync"] is True


def test_fix_without_a_server_moves_a_label_as_push_does_in_two_runs(setup, caplog):
    _stable_on_an_unpublished_version(setup)
    _fingerprint_tag_edited(setup)  # never overwritten
    # Without a server to wait on, push stops once it has asked for version 1 to load: a
    # polling TF Serving refuses a label on a version it has not loaded yet.
    first = setup.reconcile("--fix", "--json")
    assert first.exit_code == 10
    # In-process, pytest owns the log handlers; a shell sees this warning on stderr.
    assert "label stable can move to it only once TF Serving has loaded it" in caplog.text
    assert "still fixable: run --fix again once the servers have loaded" in first.stderr
    doc = json.loads(first.stdout)
    assert doc["fixed"] == []
    assert kinds(doc["drift"]) == {"champion_stable": True, "label_unpublished": True,
                                   "tags_differ": False}
    assert setup.serving() == ModelServing((1, 2, 7), {"stable": 7, "canary": 2})

    doc = setup.document("--fix", code=10)  # run again, once 1 is loaded
    assert kinds(doc["fixed"]) == {"champion_stable": True, "label_unpublished": True}
    assert kinds(doc["drift"]) == {"tags_differ": False}
    # stable back on champion's 1, beside canary's 2; 7 (never published) dropped.
    assert setup.serving() == ModelServing((1, 2), {"stable": 1, "canary": 2})
    assert setup.tags(1)["shipyard.fingerprint"] == "sha256:other"

    setup.client.set_model_version_tag(setup.name, "1", "shipyard.fingerprint",
                                       read_manifest(setup.repo / setup.name / "1").fingerprint)
    assert setup.document("--fix", code=0) == {"name": setup.name, "in_sync": True,
                                                "drift": [], "fixed": []}


def test_fix_moves_no_label_onto_a_corrupt_version_and_no_alias(setup):
    _champion_moved_to_2(setup)
    variables = next((setup.repo / setup.name / "2" / "variables").glob("*.data-*"))
    variables.write_bytes(variables.read_bytes()[:-1])  # truncated
    before = (setup.repo / "models.config").read_text()
    doc = setup.document("--fix", code=10)
    assert doc["fixed"] == []
    drift = {item["kind"]: item for item in doc["drift"]}
    assert kinds(doc["drift"]) == {"champion_stable": False, "checksum_failed": False}
    assert "champion names version 2, which is published, fails its checksums" in \
        drift["champion_stable"]["fix"]
    assert (setup.repo / "models.config").read_text() == before
    assert setup.client.get_registered_model(setup.name).aliases["champion"] == "2"


def test_a_server_serving_a_dropped_version_or_missing_one(cli, templates, repo, mlflow_server,
                                                           tf_serving):
    s = Setup(cli, templates, repo, mlflow_server.uri, tf_serving)
    # Canary ended by hand in the registry and the file; nobody told the server.
    _canary_label_dropped_by_hand(s)
    write_config(repo, s.name, (1,), {"stable": 1})
    doc = s.document("--fix", code=10)
    assert kinds(doc["drift"]) == {"server_extra_version": False}
    [item] = doc["drift"]
    assert item["subject"] == f"server {tf_serving.address} version 2"
    assert item["says"] == {"config": {"versions": [1]},
                            "server": {"address": tf_serving.address, "version": 2,
                                       "state": "AVAILABLE"}}
    assert s.document(code=0, servers=False)["in_sync"] is True  # the file and registry agree

    # The config loads a version the server was never sent.
    write_config(repo, s.name, (1, 2, 3), {"stable": 1})
    add_version(repo, s.name, 3, templates[1])
    s.client.create_model_version(s.name, source="s3://nowhere/3",
                                  tags=register_tags(repo / s.name / "3", 3))
    drift = s.document(code=10)["drift"]
    missing = [item for item in drift if item["kind"] == "server_missing_version"]
    assert [item["says"]["server"] for item in missing] == [
        {"address": tf_serving.address, "version": 3, "state": None}]
    assert {item["kind"] for item in drift} == {"server_missing_version", "unlabelled_version"}


def test_unreachable_registry_and_server_and_bad_arguments(setup, monkeypatch, tmp_path):
    unknown = setup.cli("reconcile", "--repo", str(setup.repo), "--name", "nothing-here",
                        "--tracking-uri", setup.uri)
    assert unknown.exit_code == 2
    assert "--name nothing-here: the registry at" in unknown.stderr
    assert "has no registered model nothing-here" in unknown.stderr

    no_server = setup.reconcile("--server", "127.0.0.1:9")
    assert no_server.exit_code == 7
    assert "cannot read model status at TF Serving 127.0.0.1:9" in no_server.stderr
    assert "Check --server" in no_server.stderr

    bad = setup.reconcile("--server", "no-port")
    assert bad.exit_code == 2
    assert "--server: expected HOST:PORT (TF Serving's gRPC port, usually 8500), got " \
           "'no-port'" in bad.stderr

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = setup.cli("reconcile", "--repo", str(setup.repo), "--name", setup.name,
                     "--tracking-uri", "http://127.0.0.1:9", "--fix", "--json")
    assert down.exit_code == 6
    assert down.stdout == ""
    assert "MLflow at http://127.0.0.1:9" in down.stderr and "unreachable" in down.stderr

