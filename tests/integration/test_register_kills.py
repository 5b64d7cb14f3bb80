"""A `register` cut off from MLflow at any of its MLflow requests is completed by running it
again (issue 13, Deliver 1): a fault proxy (support/mlflow_proxy.py) in front of the real test
MLflow server injects the fault at request k, for every k of one `register`.

After the re-run, checked through MlflowClient: one version N (no duplicate), tagged
published=true and serving_version=N; its run FINISHED with those tags; no run left
RUNNING; `candidate` at N and exactly one recorded move to it, none pending; directory N
published. The same small model is exported and verified once per session (the `staged`
fixture); each attempt copies that export into its staging directory and runs the MLflow half
of `register` (register_staged, support/register_faults.py).

Faults, in-process: "cut" (the registry gone from request k on: a kill's server state) and
"drop" (request k applied, its answer lost: MLflow's client retries). By default (about 2
minutes): a cut at every distinct step (a run of requests of one kind, like the 13 artifact
uploads, counts once) and a drop at every create. `-m sweep` sweeps every k with each fault.
SIGKILLs of the real `shipyard register` command: e2e/test_register_kills.py.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from support.register_faults import client_for, inconsistencies, register_copy

from shipyard.core.audit import LOG_TAG_PREFIX
from shipyard.core.errors import ShipyardError


def _kind(request: str) -> str:
    method, path = request.split(" ", 1)
    path = path.split("?")[0]
    return f"{method} /api/2.0/mlflow-artifacts/" if "mlflow-artifacts" in path else request


def distinct_steps(requests: list[str]) -> list[int]:
    """k of each request that differs in kind from the one before: a run of requests of one
    kind (the 13 artifact uploads, two reads in a row) leaves the server in one kind of state
    whichever of them a fault hits, so the first of the run stands for the others."""
    return [k for k in range(1, len(requests) + 1)
            if k == 1 or _kind(requests[k - 1]) != _kind(requests[k - 2])]


def creating_requests(requests: list[str]) -> list[int]:
    """k of the requests a retry repeats with an effect: the creates (a lost answer to any
    other request is retried harmlessly: reads, and writes of the same value)."""
    return [k for k, r in enumerate(requests, 1) if r.split("?")[0].endswith("/create")]


def _sweep(fault: str, ks: list[int], proxy, staged, tmp_path, requests,
           monkeypatch) -> dict[str, list]:
    left: dict[str, list] = {"after_fault": [], "after_rerun": [], "timings": []}
    for k in ks:
        started = time.monotonic()
        name = f"{fault}-{k:02d}"
        repo_dir = tmp_path / name
        proxy.arm(fault, at=k)
        with monkeypatch.context() as env:
            if fault == "cut":  # fail at once instead of after MLflow's backoff
                env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            try:
                register_copy(proxy.uri, repo_dir, name, staged)
            except ShipyardError:
                pass  # the fault's report (exit 6, MLflow unreachable); the re-run matters
        assert proxy.fired, f"{fault} at {k}: the register made fewer requests"
        proxy.arm(None)
        if problems := inconsistencies(proxy.uri, name, repo_dir):
            left["after_fault"].append((k, requests[k - 1], problems))
        result = register_copy(proxy.uri, repo_dir, name, staged)
        if problems := inconsistencies(proxy.uri, name, repo_dir):
            left["after_rerun"].append((k, requests[k - 1], problems))
        assert result.aliases.get("candidate") == result.version
        left["timings"].append(round(time.monotonic() - started, 1))
    return left


@pytest.mark.parametrize("fault,which", [
    ("cut", "distinct"), ("drop", "creating"),
    pytest.param("cut", "every", marks=[pytest.mark.slow, pytest.mark.sweep]),
    pytest.param("drop", "every", marks=[pytest.mark.slow, pytest.mark.sweep])])
def test_requests_cut_or_dropped_are_completed_by_a_rerun(fault, which, proxy, staged, tmp_path,
                                                          requests_of_one_register,
                                                          monkeypatch):
    """Default: a cut at each distinct step and a lost answer to each create; `slow`: every k."""
    requests = requests_of_one_register
    ks = {"distinct": distinct_steps, "creating": creating_requests,
          "every": lambda r: list(range(1, len(r) + 1))}[which](requests)
    started = time.monotonic()
    left = _sweep(fault, ks, proxy, staged, tmp_path, requests, monkeypatch)
    print(f"\n{fault} at {len(ks)} of {len(requests)} requests in "
          f"{time.monotonic() - started:.0f} s; inconsistent after the fault: "
          f"{len(left['after_fault'])}, after the re-run: {len(left['after_rerun'])}; "
          f"seconds per k: {left['timings']}")
    for k, request, problems in left["after_fault"]:
        print(f"  {fault} at {k:2d} {request[:70]}: {problems}")
    assert left["after_rerun"] == []


def test_rerun_completes_each_step_a_kill_leaves(proxy, staged, tmp_path,
                                                  requests_of_one_register):
    """What each interrupted state looks like before the re-run (the cut sweep's figures,
    named): the version without serving_version, the run left RUNNING, the alias moved
    with its record pending."""
    requests = requests_of_one_register

    def cut_after(label: str, nth: int = 1) -> int:
        hits = [i for i, r in enumerate(requests, 1) if r.startswith(label)]
        return hits[nth - 1] + 1  # the request after it never arrives

    cases = {
        "after model-versions/create": cut_after("POST /api/2.0/mlflow/model-versions/create"),
        "after the first artifact upload": cut_after("PUT /api/2.0/mlflow-artifacts/"),
        "after the alias moved": cut_after("POST /api/2.0/mlflow/registered-models/alias"),
    }
    client = client_for(proxy.uri)
    found = {}
    for label, k in cases.items():
        name = f"step-{k:02d}"
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        try:
            proxy.arm("cut", at=k)
            with pytest.raises(ShipyardError, match=r"MLflow at .* unreachable"):
                register_copy(proxy.uri, tmp_path / name, name, staged)
        finally:
            del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        proxy.arm(None)
        found[label] = name
        if label == "after model-versions/create":
            version = client.get_model_version(name, "1")
            assert "shipyard.serving_version" not in version.tags
            assert client.get_run(version.run_id).info.status == "RUNNING"
        if label == "after the first artifact upload":
            runs = client.search_runs([client.get_experiment_by_name(f"shipyard/{name}")
                                       .experiment_id])
            assert [r.info.status for r in runs] == ["RUNNING"]
            abandoned = runs[0].info.run_id
        if label == "after the alias moved":
            model = client.get_registered_model(name)
            assert model.aliases == {"candidate": "1"}
            pending = [json.loads(v) for k, v in model.tags.items()
                       if k.startswith(LOG_TAG_PREFIX)]
            assert [r.get("pending") for r in pending] == [True]
        result = register_copy(proxy.uri, tmp_path / name, name, staged,
                               pipeline_run_id="rerun-1")
        assert inconsistencies(proxy.uri, name, tmp_path / name) == [], label
        assert result.version == 1
    # The abandoned run is marked, not deleted: it says which run took over.
    run = client.get_run(abandoned)
    assert run.info.status == "FAILED"
    assert run.data.tags["shipyard.superseded_by"] != abandoned
