"""A `register` killed, or cut off from MLflow, at any of its MLflow requests is completed by
running it again (issue 13, Deliver 1): a fault proxy (mlflow_proxy.py) in front of the real
test MLflow server injects the fault at request k, for every k of one `register`.

After the re-run, checked through MlflowClient: one version N (no duplicate), tagged
published=true and serving_version=N; its run FINISHED with those tags; no run left
RUNNING; `candidate` at N and exactly one recorded move to it, none pending; directory N
published. The same small model is exported and verified once; each attempt copies that
export into its staging directory and runs the MLflow half of `register` (register_staged),
except the SIGKILL sweep, which runs the real `shipyard register` command.

Faults: "cut" (the registry gone from request k on: a kill's server state, in-process),
"drop" (request k applied, its answer lost: MLflow's client retries) and SIGKILL of the
real command. By default (about 2 minutes): a cut at every distinct step (a run of requests
of one kind, like the 13 artifact uploads, counts once), a drop at every create, and
SIGKILLs at two chosen k. `-m sweep` sweeps every k with each of the three faults (off by
default: the SIGKILL sweep alone takes about 45 min).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env
from mlflow_proxy import FaultProxy

from shipyard.core.audit import LOG_TAG_PREFIX
from shipyard.core.errors import ShipyardError
from shipyard.core.manifest import write_manifest
from shipyard.core.progress import NullProgress
from shipyard.core.spec import parse_spec
from shipyard.registry.client import ModelRegistry, RegistryLocation
from shipyard.repository import open_repository
from shipyard.steps.export import ExportRequest, stage_export
from shipyard.steps.register import register_staged

pytestmark = pytest.mark.integration

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}


@pytest.fixture(scope="module")
def proxy(mlflow_server):
    fault_proxy = FaultProxy(mlflow_server.uri)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(scope="module")
def staged(launcher, models, tmp_path_factory):
    """The small model exported and verified once: (directory, manifest, timings)."""
    root = tmp_path_factory.mktemp("staged")
    request = ExportRequest(model=models.path("sequential"), spec=parse_spec(SPEC),
                            repo=root / "repo", name="sweep")
    repo = open_repository(request.repo)
    verifier = launcher()
    try:
        with repo.create_staging(request.name) as staging:
            manifest, timings = stage_export(request, repo, staging, verifier, NullProgress())
            shutil.copytree(staging.path, root / "export")
    finally:
        verifier.close()
    return root / "export", manifest, timings


def register_copy(uri: str, repo_dir: Path, name: str, staged, pipeline_run_id=None):
    """`register` of the staged export as NAME, without exporting again."""
    export, manifest, timings = staged
    manifest = {**manifest, "name": name}
    request = ExportRequest(model=Path("unused.keras"), spec=parse_spec(SPEC), repo=repo_dir,
                            name=name)
    repo = open_repository(repo_dir)
    registry = ModelRegistry(RegistryLocation.resolve(uri))
    with repo.create_staging(name) as staging:
        shutil.copytree(export, staging.path, dirs_exist_ok=True)
        write_manifest(staging.path, manifest)
        return register_staged(registry, repo, request, staging, manifest, timings,
                               pipeline_run_id=pipeline_run_id)


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def inconsistencies(uri: str, name: str, repo_dir: Path) -> list[str]:
    """What differs from a completed registration of NAME (empty: consistent)."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    problems: list[str] = []
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return ["no registered model"]
    versions = client.search_model_versions(f"name='{name}'")
    if len(versions) != 1:
        problems.append(f"{len(versions)} versions: {sorted(v.version for v in versions)}")
    if not versions:
        return problems
    version = min(versions, key=lambda v: int(v.version))
    n = version.version
    run = client.get_run(version.run_id)
    for where, tags in (("version", version.tags), ("run", run.data.tags)):
        for key, value in (("shipyard.published", "true"), ("shipyard.serving_version", n)):
            if tags.get(key) != value:
                problems.append(f"{where} tag {key}={tags.get(key)!r}")
        for key in ("shipyard.fingerprint", "shipyard.pipeline_run_id"):
            if key not in tags:
                problems.append(f"{where} tag {key} missing")
    if run.info.status != "FINISHED":
        problems.append(f"run {run.info.status}")
    running = client.search_runs([run.info.experiment_id],
                                 filter_string="attributes.status = 'RUNNING'")
    if running:
        problems.append(f"{len(running)} run(s) left RUNNING")
    if model.aliases.get("candidate") != n:
        problems.append(f"candidate at {model.aliases.get('candidate')}")
    records = [json.loads(model.tags[k]) for k in sorted(model.tags)
               if k.startswith(LOG_TAG_PREFIX)]
    moves = [(r["alias"], r["from"], r["to"], bool(r.get("pending"))) for r in records]
    if moves != [("candidate", None, int(n), False)]:
        problems.append(f"alias records {moves}")
    published = sorted(p.name for p in (repo_dir / name).iterdir()
                       if p.name.isdigit()) if (repo_dir / name).is_dir() else []
    if published != [n] or not (repo_dir / name / n / "saved_model.pb").is_file():
        problems.append(f"directories {published}")
    return problems


@pytest.fixture(scope="module")
def requests_of_one_register(proxy, staged, tmp_path_factory):
    """The MLflow requests of one clean `register` of a new name (without the reachability
    check, which the command makes before exporting)."""
    proxy.arm(None)
    repo_dir = tmp_path_factory.mktemp("count")
    result = register_copy(proxy.uri, repo_dir, "sweep-count", staged)
    requests = list(proxy.requests)
    assert (result.version, result.reused, result.aliases) == (1, False, {"candidate": 1})
    assert inconsistencies(proxy.uri, "sweep-count", repo_dir) == []
    print("\nthe MLflow requests of one register:\n" + "\n".join(
        f"{k:3d} {r}" for k, r in enumerate(requests, 1)))
    return requests


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


def _kill_at(k: int, proxy, models, tmp_path, spec: str, staged) -> tuple[list, list]:
    name = f"kill-{k:02d}"
    repo_dir = tmp_path / name
    shipyard = str(Path(sys.executable).parent / "shipyard")
    proxy.arm("kill", at=k)
    child = subprocess.Popen(
        [shipyard, "register", str(models.path("sequential")), "--spec", spec, "--repo",
         str(repo_dir), "--name", name, "--tracking-uri", proxy.uri,
         "--serving-runtime", "none", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
        start_new_session=True)
    proxy.set_victim(child.pid)
    try:
        _, err = child.communicate(timeout=600)
    finally:
        try:  # its verifier child, if the kill orphaned it
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proxy.fired and child.returncode == -signal.SIGKILL, (k, child.returncode, err[-2000:])
    proxy.arm(None)
    before = inconsistencies(proxy.uri, name, repo_dir)
    register_copy(proxy.uri, repo_dir, name, staged)
    return before, inconsistencies(proxy.uri, name, repo_dir)


def _kill_point(requests: list[str]) -> int:
    """One kill by default, a subprocess that exports (about 30-60 s here): right after the
    alias moved, before its record settles, the state issue 13 found hidden. The state a
    kill leaves after model-versions/create is the cut test's, and the sweep kills there
    too (k counts the command's reachability check)."""
    return next(i for i, r in enumerate(requests, 1)
                if r.startswith("POST /api/2.0/mlflow/registered-models/alias")) + 2


def test_sigkill_at_chosen_requests_is_completed_by_a_rerun(proxy, models, staged, tmp_path,
                                                            requests_of_one_register):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    k = _kill_point(requests_of_one_register)
    before, after = _kill_at(k, proxy, models, tmp_path, str(spec), staged)
    assert before, f"kill at {k} left nothing to complete: not a useful kill point"
    assert after == [], (k, after)


@pytest.mark.slow
@pytest.mark.sweep
def test_sigkill_at_every_request_is_completed_by_a_rerun(proxy, models, staged, tmp_path,
                                                          requests_of_one_register):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    started = time.monotonic()
    left_before, left_after = [], []
    total = len(requests_of_one_register) + 1  # + the reachability check before the export
    # A sweep of about 45 min can be resumed: SHIPYARD_KILL_SWEEP_FROM=k starts at k.
    first = int(os.environ.get("SHIPYARD_KILL_SWEEP_FROM", "1"))
    for k in range(first, total + 1):
        before, after = _kill_at(k, proxy, models, tmp_path, str(spec), staged)
        left_before += [(k, before)] if before else []
        left_after += [(k, after)] if after else []
    print(f"\nSIGKILL: k = {first} to {total} in {time.monotonic() - started:.0f} s; "
          f"inconsistent after "
          f"the kill: {len(left_before)}, after the re-run: {len(left_after)}")
    assert left_after == []
