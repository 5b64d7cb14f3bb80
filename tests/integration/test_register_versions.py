"""Which version a `register` uses when another registration of the same content has one
pending (steps.versions), against the real test MLflow server: the small model staged once
(the `staged` fixture), its MLflow half run in-process (register_staged), so that each case
costs seconds. Concurrent `shipyard register` processes: e2e/test_register_concurrency.py."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import pytest
from support.register_faults import client_for, inconsistencies, register_copy

from shipyard.core.claims import Owner


class Steps:
    """Progress that records the step labels; `on(prefix, action)` runs `action` as a step
    starting with `prefix` begins (a fault or a signal at that exact moment)."""

    def __init__(self):
        self.labels: list[str] = []
        self.actions: dict[str, object] = {}

    def on(self, prefix: str, action) -> Steps:
        self.actions[prefix] = action
        return self

    def step(self, label: str):
        self.labels.append(label)
        for prefix, action in self.actions.items():
            if label.startswith(prefix):
                action()
        return contextlib.nullcontext()


def register(uri: str, repo_dir: Path, name: str, staged, progress=None,
             wait_timeout_s: float = 60.0):
    return register_copy(uri, repo_dir, name, staged, progress=progress or Steps(),
                         wait_timeout_s=wait_timeout_s)


class Died(Exception):
    pass


def _die():
    raise Died("the registration ends here, its version pending")


def leave_pending(uri: str, repo_dir: Path, name: str, staged) -> None:
    """A registration that ends after registering its version, before publishing it."""
    with pytest.raises(Died, match="its version pending"):
        register(uri, repo_dir, name, staged, Steps().on("publish version", _die))
    assert client_for(uri).get_model_version(name, "1").tags["shipyard.published"] == "false"


def test_a_pending_version_whose_owner_ended_here_is_taken_over_at_once(mlflow_server, staged,
                                                                        tmp_path):
    repo_dir = tmp_path / "repo"
    leave_pending(mlflow_server.uri, repo_dir, "vers-a", staged)
    steps = Steps()
    result = register(mlflow_server.uri, repo_dir, "vers-a", staged, steps,
                      wait_timeout_s=600)
    assert not [label for label in steps.labels if label.startswith("wait for version")]
    assert (result.version, result.reused) == (1, False)
    assert inconsistencies(mlflow_server.uri, "vers-a", repo_dir) == []


def test_a_pending_version_owned_elsewhere_is_waited_for_then_taken_over(
        mlflow_server, staged, tmp_path, caplog):
    repo_dir = tmp_path / "repo"
    leave_pending(mlflow_server.uri, repo_dir, "vers-b", staged)
    elsewhere = Owner("build-7/boot-x/4026531836", pid=41, started=99, token="t")
    client_for(mlflow_server.uri).set_model_version_tag("vers-b", "1", "shipyard.owner",
                                                        elsewhere.to_tag())
    steps = Steps()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="shipyard.steps.versions"):
        result = register(mlflow_server.uri, repo_dir, "vers-b", staged, steps,
                          wait_timeout_s=2)
    assert time.monotonic() - started >= 2
    [waited] = [label for label in steps.labels if label.startswith("wait for version")]
    assert waited.startswith("wait for version 1, registered by pid 41 on build-7, to be "
                             "published (up to ")
    assert "version 1 of 'vers-b' (this content) was registered by pid 41 on build-7 but " \
           "not published within 2 s; this run publishes it" in caplog.text
    assert (result.version, result.reused) == (1, False)
    assert inconsistencies(mlflow_server.uri, "vers-b", repo_dir) == []


def test_a_live_registration_is_waited_for_and_its_version_reused(mlflow_server, staged,
                                                                   tmp_path):
    """Two registrations of one content in one process (threads: their tokens tell them
    apart): the second finds the first's version pending, waits, and reuses it."""
    repo_dir = tmp_path / "repo"
    may_publish = threading.Event()
    first: dict = {}

    def run_first():
        first["result"] = register(mlflow_server.uri, repo_dir, "vers-c", staged,
                                   Steps().on("publish version", may_publish.wait))

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while client_for(mlflow_server.uri).search_model_versions("name='vers-c'") == []:
            assert time.monotonic() < deadline, "the first registration made no version"
            time.sleep(0.2)
        steps = Steps().on("wait for version", may_publish.set)  # released once we wait
        second = register(mlflow_server.uri, repo_dir, "vers-c", staged, steps,
                          wait_timeout_s=120)
    finally:
        may_publish.set()
        thread.join()
    assert [label for label in steps.labels if label.startswith("wait for version")]
    assert (first["result"].version, first["result"].reused) == (1, False)
    assert (second.version, second.reused, second.run_id) == (1, True,
                                                               first["result"].run_id)
    assert inconsistencies(mlflow_server.uri, "vers-c", repo_dir) == []


def test_a_newer_version_left_by_a_run_that_died_giving_way_is_deleted(mlflow_server, staged,
                                                                       tmp_path):
    repo_dir = tmp_path / "repo"
    leave_pending(mlflow_server.uri, repo_dir, "vers-d", staged)
    client = client_for(mlflow_server.uri)
    kept = client.get_model_version("vers-d", "1")
    # What a run killed between marking its run and deleting its version leaves: version 2
    # of the same content, unpublished, its owner gone.
    run = client.create_run(client.get_run(kept.run_id).info.experiment_id,
                            tags={"shipyard.fingerprint": kept.tags["shipyard.fingerprint"]})
    dead = Owner(Owner.from_tag(kept.tags["shipyard.owner"]).host, pid=2**22 + 1, started=1,
                 token="t")
    client.create_model_version("vers-d", f"{run.info.artifact_uri}/model",
                                run_id=run.info.run_id, tags={
        "shipyard.fingerprint": kept.tags["shipyard.fingerprint"],
        "shipyard.published": "false", "shipyard.owner": dead.to_tag()})
    result = register(mlflow_server.uri, repo_dir, "vers-d", staged)
    assert (result.version, result.reused) == (1, False)
    assert [v.version for v in client.search_model_versions("name='vers-d'")] == ["1"]
    left = client.get_run(run.info.run_id)
    assert (left.info.status, left.data.tags["shipyard.superseded_by"]) == (
        "FAILED", kept.run_id)
    assert inconsistencies(mlflow_server.uri, "vers-d", repo_dir) == []
