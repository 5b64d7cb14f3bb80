"""The offline canary on a real SQLite MLflow and real Beam validation: first deployment, a
canary that misses its gate and is rolled back, the same canary passing and being promoted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shipyard.errors import GateError, UsageError
from shipyard.flow import ExportRequest
from shipyard.registry.audit import history
from shipyard.serving.config_file import current_serving
from shipyard.spec import parse_spec

pytestmark = pytest.mark.integration

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}


@pytest.fixture
def published(models, launcher, tmp_path):
    """Version 1 (sequential, relu) and version 2 (sequential_tanh: same weights, another
    activation, so the two disagree on some examples), registered in a SQLite MLflow."""
    from shipyard.registration import register_model
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.repository import open_repository

    location = RegistryLocation.resolve(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for kind in ("sequential", "sequential_tanh"):
        register_model(ExportRequest(model=models.path(kind), spec=parse_spec(SPEC),
                                     repo=tmp_path / "repo", name="can"),
                       location, launch_verifier=launcher)
    rows = np.random.default_rng(7).standard_normal((40, 3)).astype(np.float32)
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"x": [float(v) for v in row]}) + "\n"
                                for row in rows))
    return open_repository(str(tmp_path / "repo")), ModelRegistry(location), str(examples)


def aliases_and_moves(registry):
    model = registry.registered_model("can")
    return {a: int(v) for a, v in model.aliases.items()}, history(dict(model.tags))


def test_a_canary_that_misses_its_gate_is_rolled_back_and_can_pass_later(published):
    from shipyard.canary import first_deployment, offline_canary

    repo, registry, examples = published
    with pytest.raises(UsageError, match="can has no champion to compare version 2 against"):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5)

    first_deployment(repo, registry, "can", 1, pipeline_run_id="run-1")
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((1,), {"stable": 1})
    with pytest.raises(UsageError, match=r"already has a champion \(version 1\)"):
        first_deployment(repo, registry, "can", 2)

    # relu and tanh do not pick the same class on every example: a gate of 1.0 fails.
    with pytest.raises(GateError, match=r"can version 2 was rolled back; champion stays "
                                        r"version 1: validation gates failed:\n  - agreement "
                                        r"logits: 0\.\d+ < --min-agreement 1"):
        offline_canary(repo, registry, "can", 2, examples, min_agreement=1.0,
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
                              pipeline_run_id="run-3")
    assert promoted["promoted"] and promoted["previous_champion"] == 1
    serving = current_serving(repo, "can")
    assert (serving.versions, serving.labels) == ((2,), {"stable": 2})
    aliases, moves = aliases_and_moves(registry)
    assert aliases == {"champion": 2, "candidate": 2}
    promotion = next(m for m in moves if m["alias"] == "champion" and m["to"] == 2)
    assert promotion["from"] == 1 and promotion["gates"]["min_agreement"] == 0.5
    assert promotion["reason"] == "offline canary passed against champion 1"

    again = offline_canary(repo, registry, "can", 2, examples, min_agreement=0.5)
    assert again == {"name": "can", "version": 2, "champion": 2, "promoted": False,
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

    first = json.loads(components.canary.python_func(version=1, min_agreement=0.5, **common))
    assert first == {"name": "can", "champion": 1, "first_deployment": True}
    with pytest.raises(GateError, match="can version 2 was rolled back"):
        components.canary.python_func(version=2, min_agreement=1.0, **common)
    checked = json.loads(components.validate.python_func(
        version=2, against="champion", min_agreement=0.5, agreement_outputs="logits",
        **common))
    assert (checked["passed"], checked["against"]) == (True, 1)
    assert checked["thresholds"]["agreement_outputs"] == ["logits"]
    promoted = json.loads(components.canary.python_func(version=2, min_agreement=0.5,
                                                         **common))
    assert promoted["promoted"] and promoted["champion"] == 2

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    policy = "steps: [{weight: 100, pause_seconds: 30}]\ngates: {max_error_rate: 0.01}\n"
    with pytest.raises(RuntimeError, match=r"shipyard rollout start failed \(exit 1\): error: "
                                           r"no Kubernetes cluster configured"):
        components.rollout.python_func(model_name="can", version=2, policy=policy,
                                       namespace="ml", tracking_uri=common["tracking_uri"])
