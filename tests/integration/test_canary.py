"""The offline canary on a real SQLite MLflow and real validation (in process): first deployment, a
canary that misses its gate and is rolled back, the same canary passing and being promoted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support.specs import SEQUENTIAL_SPEC as SPEC

from shipyard.core.audit import history
from shipyard.core.errors import GateError, UsageError
from shipyard.core.spec import parse_spec
from shipyard.serving.config_file import current_serving
from shipyard.steps.export import ExportRequest


@pytest.fixture(scope="module")
def registered(models, launcher, tmp_path_factory):
    """Version 1 (sequential, relu) and version 2 (sequential_tanh: same weights, another
    activation, so the two disagree on some examples), registered once in a SQLite MLflow."""
    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.register import register_model

    root = tmp_path_factory.mktemp("canary")
    location = RegistryLocation.resolve(f"sqlite:///{root / 'mlflow.db'}")
    for kind in ("sequential", "sequential_tanh"):
        register_model(ExportRequest(model=models.path(kind), spec=parse_spec(SPEC),
                                     repo=root / "repo", name="can"),
                       location, launch_verifier=launcher)
    rows = np.random.default_rng(7).standard_normal((40, 3)).astype(np.float32)
    (root / "examples.jsonl").write_text("".join(json.dumps({"x": [float(v) for v in row]})
                                                 + "\n" for row in rows))
    return root


@pytest.fixture
def published(registered, tmp_path):
    """A copy of `registered` for one test: the repository, models.config and the MLflow
    database (whose artifacts stay where they were registered)."""
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.repository import open_repository

    root = tmp_path / "canary"
    shutil.copytree(registered, root)
    location = RegistryLocation.resolve(f"sqlite:///{root / 'mlflow.db'}")
    return (open_repository(str(root / "repo")), ModelRegistry(location),
            str(root / "examples.jsonl"))


def aliases_and_moves(registry):
    model = registry.registered_model("can")
    return {a: int(v) for a, v in model.aliases.items()}, history(dict(model.tags))


def test_a_canary_that_misses_its_gate_is_rolled_back_and_can_pass_later(published):
    from shipyard.steps.canary import first_deployment, offline_canary

    repo, registry, examples = published
    with pytest.raises(UsageError, match="serving_address: the canary moves labels in several "
                                         "steps .* or file_only=True when no server reads"):
        first_deployment(repo, registry, "can", 1)
    with pytest.raises(UsageError, match="can has no champion to compare version 2 against"):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5, file_only=True)

    first_deployment(repo, registry, "can", 1, file_only=True, pipeline_run_id="run-1")
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((1,), {"stable": 1})
    with pytest.raises(UsageError, match=r"already has a champion \(version 1\)"):
        first_deployment(repo, registry, "can", 2, file_only=True)

    # relu and tanh do not pick the same class on every example: a gate of 1.0 fails.
    with pytest.raises(GateError, match=r"can version 2 was rolled back; champion stays "
                                        r"version 1: validation gates failed:\n  - agreement "
                                        r"logits: 0\.\d+ < --min-agreement 1"):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=1.0, file_only=True,
                       pipeline_run_id="run-2")
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((1,), {"stable": 1})
    aliases, moves = aliases_and_moves(registry)
    assert aliases == {"champion": 1, "candidate": 2}
    canary_moves = [(m["from"], m["to"]) for m in moves if m["alias"] == "canary"]
    assert canary_moves == [(None, 2), (2, None)]
    rollback = moves[-1]
    assert rollback["pipeline_run_id"] == "run-2"
    assert rollback["gates"]["passed"] is False
    assert rollback["gates"]["agreement"]["logits"]["top1_agreement"] < 1.0
    assert rollback["reason"].startswith("offline canary of version 2 rolled back")

    promoted = offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5,
                              file_only=True, pipeline_run_id="run-3")
    assert promoted.promoted and promoted.previous_champion == 1
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((2,), {"stable": 2})
    aliases, moves = aliases_and_moves(registry)
    assert aliases == {"champion": 2, "candidate": 2}
    promotion = next(m for m in moves if m["alias"] == "champion" and m["to"] == 2)
    assert promotion["from"] == 1 and promotion["gates"]["min_agreement"] == 0.5
    assert promotion["reason"] == "offline canary passed against champion 1"

    again = offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5,
                           file_only=True)
    assert again.to_json() == {"name": "can", "version": 2, "champion": 2, "promoted": False,
                               "reason": "version 2 is already the champion"}


def test_the_kfp_components_run_the_same_canary_validation_and_rollout(published, tmp_path,
                                                                       monkeypatch):
    """The bodies of the KFP components (what the container runs), called in this process on
    real MLflow and Beam; the rollout component, with no cluster, fails with shipyard's
    message."""
    from shipyard.kfp.components import make_components

    components = make_components("europe-docker.pkg.dev/acme/shipyard:1")
    repo, registry, examples = published
    common = {"repository": repo.location, "model_name": "can", "examples": examples,
              "tracking_uri": registry.location.tracking_uri}
    labels = {"file_only": True, "pipeline_run_id": "kfp-run-1"}

    first = json.loads(components.canary.python_func(version=1, min_agreement=0.5, **common,
                                                     **labels))
    assert first == {"name": "can", "champion": 1, "first_deployment": True}
    with pytest.raises(GateError, match="can version 2 was rolled back"):
        components.canary.python_func(version=2, min_agreement=1.0, **common, **labels)
    checked = json.loads(components.validate.python_func(
        version=2, against="champion", min_agreement=0.5, agreement_outputs="logits",
        **common))
    assert (checked["passed"], checked["against"]) == (True, 1)
    assert checked["thresholds"]["agreement_outputs"] == ["logits"]
    promoted = json.loads(components.canary.python_func(version=2, min_agreement=0.5,
                                                         **common, **labels))
    assert promoted["promoted"] and promoted["champion"] == 2
    _, moves = aliases_and_moves(registry)
    assert {m["pipeline_run_id"] for m in moves if m["alias"] != "candidate"} == {"kfp-run-1"}

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    policy = "steps: [{weight: 100, pause_seconds: 30}]\ngates: {max_error_rate: 0.01}\n"
    with pytest.raises(RuntimeError, match=r"shipyard rollout start failed \(exit 1\): error: "
                                           r"no Kubernetes cluster configured"):
        components.rollout.python_func(model_name="can", version=2, policy=policy,
                                       namespace="ml", tracking_uri=common["tracking_uri"])


def test_failures_leave_no_canary_behind_and_a_stopped_promotion_finishes_on_rerun(
        published, monkeypatch):
    import shipyard.steps.canary as canary_module
    from shipyard.core.errors import ServingError
    from shipyard.steps.canary import first_deployment, offline_canary
    from shipyard.steps.rollout import RegistryAliases

    repo, registry, examples = published
    first_deployment(repo, registry, "can", 1, file_only=True)

    def unchanged():
        serving = current_serving(repo, "can")
        assert (serving.versions, serving.labels) == ((1,), {"stable": 1})
        assert aliases_and_moves(registry)[0] == {"champion": 1, "candidate": 2}

    # A version MLflow does not know is refused before models.config changes.
    with pytest.raises(UsageError, match="registered model .can. has no version 9"):
        offline_canary(repo, registry, "can", 9, examples, min_agreement=0.5, file_only=True)
    unchanged()

    # Ctrl-C during validation: the canary label and alias are removed, the interrupt stands.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(canary_module, "_validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5, file_only=True)
    unchanged()
    assert aliases_and_moves(registry)[1][-1]["reason"] == (
        "offline canary of version 2 rolled back: KeyboardInterrupt")
    monkeypatch.undo()

    # A rollback step that fails does not stop the other, and both the cause and the failed
    # step are reported with the cause's exit code.
    def unreachable(*args, **kwargs):
        raise ServingError("TF Serving at 10.0.0.1:8500 is unreachable")

    monkeypatch.setattr(canary_module, "drop_label", unreachable)
    with pytest.raises(GateError, match=r"(?s)agreement logits: .*The rollback is incomplete; "
                                        r"drop the canary label failed: TF Serving at "
                                        r"10\.0\.0\.1:8500 is unreachable\. Remove the canary "
                                        r"label and alias by hand") as failed:
        offline_canary(repo, registry, "can", 2, examples, min_agreement=1.0, file_only=True)
    assert failed.value.exit_code == 8
    assert "canary" not in aliases_and_moves(registry)[0]  # the alias was still cleared
    assert current_serving(repo, "can").labels == {"stable": 1, "canary": 2}  # as reported
    monkeypatch.undo()
    from shipyard.steps.push import drop_label

    drop_label(repo, "can", "canary")  # what the operator does by hand

    # Another canary in progress is not taken over.
    RegistryAliases(registry).set_canary("can", 2, reason="a cluster rollout")
    with pytest.raises(UsageError, match=r"can has a canary in progress \(version 2\)"):
        offline_canary(repo, registry, "can", 1, examples, min_agreement=0.5, file_only=True)
    RegistryAliases(registry).clear_canary("can", reason="aborted", gates={})

    # A promotion that stops halfway says so, and running the canary again finishes it.
    def broken(self, name, reason, gates):
        raise ServingError("MLflow went away")

    monkeypatch.setattr(RegistryAliases, "clear_canary", broken)
    with pytest.raises(ServingError, match="The promotion of can version 2 stopped halfway; "
                                           "run the same offline canary again"):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5, file_only=True)
    assert aliases_and_moves(registry)[0] == {"champion": 2, "candidate": 2, "canary": 2}
    monkeypatch.undo()
    finished = offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5,
                              file_only=True)
    assert finished.reason == "version 2 is already the champion"
    assert aliases_and_moves(registry)[0] == {"champion": 2, "candidate": 2}
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((2,), {"stable": 2})
