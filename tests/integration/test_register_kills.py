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
"drop" (request k applied, its answer lost: MLflow's client retries). `-m sweep` sweeps every k
with each fault. By default: a drop at every create (creating_requests), and a cut at every k
that leaves a distinct interrupted state (distinct_states):

- A cut at k leaves on the server the effects of requests 1..k-1, and in the repository
  directory the files as they were when request k arrived (then the failed command unwinds
  as it always does, removing its staging directory; a kill leaves it).
- So the cuts at k and k+1 leave the same server state when request k is a read (a GET, or
  one of MLflow's POSTs that only read: READING_POSTS), and the same local state when the
  repository's files (hidden claim, staging and lock files included, with their sizes) did
  not change between requests k and k+1: requests_of_one_register records them as each
  request arrives. A re-run sees nothing else (MLflow's server and the repository; the
  in-process registration that was cut has ended, as a killed one has), so the cut at k+1
  proves nothing the cut at k does not, and k = 1 plus every k whose (server, local) state
  differs from k-1's reaches every state a cut can leave.
- One more equivalence, kept from the sweep by request kind: inside a run of consecutive
  writes of one kind (the 13 artifact uploads, the two log-batch calls that fill the new
  run) a cut leaves that run part-written. Those writes all go into the new run, which a
  re-run never reads back (it logs its own run and marks the abandoned one FAILED), so
  part-written stands with none written: the run of writes counts at its start and at its
  end (all written). A change of local files inside it (the pyfunc folder, made before the
  model's uploads) still counts.
- What a skipped cut would also show, that the lost request is reported as a ShipyardError,
  holds for every request alike (each ModelRegistry call is made under
  registry.client.translate_errors); `-m sweep` checks it at every k.

That is 16 of the 43 requests of one register (about 45 s here; the fixture's printed list
marks with * where the files changed, the test prints the ks), where the sweep by request kind
cut at 28 (about 70 s).

SIGKILLs of the real `shipyard register` command: e2e/test_register_kills.py.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from support.mlflow_proxy import ObservedRequests
from support.register_faults import client_for, inconsistencies, register_copy

from shipyard.core.audit import LOG_TAG_PREFIX
from shipyard.core.errors import ShipyardError


def _kind(request: str) -> str:
    method, path = request.split(" ", 1)
    path = path.split("?")[0]
    return f"{method} /api/2.0/mlflow-artifacts/" if "mlflow-artifacts" in path else request


# MLflow's POST endpoints that only read (its REST API, service.proto and model_registry.proto:
# every other read is a GET). Any other POST, and any PUT, PATCH or DELETE, counts as a write: a
# read missing here only adds a k, it never skips one.
READING_POSTS = frozenset({
    "/api/2.0/mlflow/runs/search", "/api/2.0/mlflow/experiments/search",
    "/api/2.0/mlflow/registered-models/get-latest-versions",
    "/api/2.0/mlflow/logged-models/search"})


def _writes(request: str) -> bool:
    method, path = request.split(" ", 1)
    return method not in ("GET", "HEAD") and path.split("?")[0] not in READING_POSTS


def distinct_states(requests: ObservedRequests) -> list[int]:
    """k = 1 and each k whose interrupted state (server, local) differs from k-1's (the module
    docstring). Server: how many runs of consecutive writes of one kind are wholly applied by
    request k-1 (a lone write is a run of one). Local: the repository's files as request k
    arrived (requests.states, recorded by requests_of_one_register)."""
    n = len(requests)
    ends = [i for i in range(1, n + 1) if _writes(requests[i - 1]) and not (
        i < n and _writes(requests[i]) and _kind(requests[i]) == _kind(requests[i - 1]))]

    def state(k: int) -> tuple[int, object]:
        return sum(1 for end in ends if end < k), requests.states[k - 1]

    return [k for k in range(1, n + 1) if k == 1 or state(k) != state(k - 1)]


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
    """Default: a cut at each distinct interrupted state and a lost answer to each create;
    `sweep`: every k."""
    requests = requests_of_one_register
    ks = {"distinct": distinct_states, "creating": creating_requests,
          "every": lambda r: list(range(1, len(r) + 1))}[which](requests)
    started = time.monotonic()
    left = _sweep(fault, ks, proxy, staged, tmp_path, requests, monkeypatch)
    print(f"\n{fault} at {len(ks)} of {len(requests)} requests (k = {ks}) in "
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
