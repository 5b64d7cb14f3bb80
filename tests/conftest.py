"""Shared fixtures, and the tiers' markers. TensorFlow is imported once per test process, lazily,
by the fixtures that need it; unit tests never import it.

The tiers are directories: unit/ (pure and fast), integration/ (real TensorFlow exports,
verifier processes, MLflow servers, Beam, TFX and KFP local runs), e2e/ (whole commands run as
processes, kills included) and cluster/ (a real Kubernetes cluster). Each test gets its tier's
markers here, so `-m "not integration"` and `-m "not slow"` select by tier. Expensive artifacts
(the test models, the published versions, the staged export, the MLflow server) are built once
per session; tests that change them work on copies."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from support.paths import TESTS_DIR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The serving-runtime check (a second TensorFlow in its own environment) is off unless a test
# is about it: those pass --serving-runtime / serving_runtime explicitly (integration/test_runtime_check.py).
os.environ["SHIPYARD_SERVING_RUNTIME"] = "none"

TIER_MARKS = {"integration": ("integration",), "e2e": ("integration", "slow"),
              "cluster": ("cluster",)}


# The files that take longest (seconds of a run on 2 workers), run first: pytest-xdist hands out
# whole files (--dist loadfile) in collection order (--no-loadscope-reorder; its own reordering
# puts the files with the most tests first, which left these few-test files to run alone at
# the end while the other worker idled).
SLOW_FILES_FIRST = (  # seconds of test time each in a 2-worker run (2026-12-05)
    "e2e/test_demo.py",  # ~80 s, one test
    "integration/test_register_kills.py",  # ~95 s
    "e2e/test_register_concurrency.py",  # ~66 s, one test
    "e2e/test_bench_smoke.py",  # ~60 s alone, ~140 s in a 3-worker run (export, register)
    "e2e/test_bench_smoke_more.py",  # ~110 s in a 3-worker run (runtime check, validate)
    "integration/test_export.py",  # ~140 s
    "integration/test_register.py",  # ~97 s
    "integration/test_model_corpus.py",  # ~90 s
    "integration/test_reusable.py",  # ~70 s
    "integration/test_validate.py",  # ~62 s
    "integration/test_independent_reference.py",  # ~44 s
    "integration/test_whole_saved_model.py",  # ~44 s
    "e2e/test_cli.py",  # ~44 s
    "integration/test_runtime_check.py",  # ~44 s
    "integration/test_tfx_component.py",  # ~42 s
    "integration/test_cli.py",  # ~36 s
    "integration/test_notify.py",  # ~39 s alone (an MLflow server of its own, one register)
    "integration/test_saved_model_vocabulary.py",  # ~32 s
    "integration/test_kfp_pipeline.py",  # ~31 s, one test
    "integration/test_kfp_promotion.py",  # ~40 s, one test
    "integration/test_validate_in_process_review.py",  # ~37 s alone
    "integration/test_validate_portable.py",  # ~30 s, one test
    "integration/test_copy.py",  # ~25 s
    "integration/test_signing_copy.py",  # ~25 s (a signed register, copies with their proofs)
    "integration/test_signing.py",  # ~20 s
    "e2e/test_copy_kills.py",  # ~25 s, one test
    "integration/test_kube_api_double.py",  # ~25 s
    "integration/test_tf_serving_warmup.py",  # ~24 s
    "integration/test_rollout_on_the_wire.py",  # ~20 s
    "integration/test_push.py",  # ~19 s alone
    "integration/test_shadow_on_the_wire.py",  # ~15 s alone
    "integration/test_reconcile.py",  # ~11 s alone
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items):
    for item in items:
        path = Path(item.path)
        tier = path.relative_to(TESTS_DIR).parts[0] if path.is_relative_to(TESTS_DIR) else None
        for mark in TIER_MARKS.get(tier, ()):
            item.add_marker(mark)
    items.sort(key=_slow_first)  # stable: each file's tests keep their order


def _slow_first(item) -> int:
    path = Path(item.path)
    relative = path.relative_to(TESTS_DIR).as_posix() if path.is_relative_to(TESTS_DIR) else ""
    return (SLOW_FILES_FIRST.index(relative) if relative in SLOW_FILES_FIRST
            else len(SLOW_FILES_FIRST))


@pytest.fixture(scope="session")
def launcher():
    """Verifiers started ahead of need, so each export finds one that imported TensorFlow."""
    from shipyard.exporter.verifier import PrefetchingLauncher

    prefetching = PrefetchingLauncher(forked=True)
    yield prefetching
    prefetching.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """The test models, each built and saved once per session (support/shipyard_test_models.py).
    Imports TensorFlow."""
    from support import shipyard_test_models

    return shipyard_test_models.ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def published(models, launcher, tmp_path_factory) -> Path:
    """A repository holding model `m`, version 1 (the sequential test model) and version 2
    (sequential_tanh: the same weights, another activation), exported once per session under
    support.specs.SEQUENTIAL_SPEC. Read it, never change it: tests copy versions out of it
    (support.versions.add_version)."""
    from support.exports import export
    from support.specs import SEQUENTIAL_SPEC

    repo = tmp_path_factory.mktemp("published") / "repo"
    for kind in ("sequential", "sequential_tanh"):
        export(launcher, models.path(kind), SEQUENTIAL_SPEC, repo)
    return repo


@pytest.fixture
def cli(request):
    """Runs `shipyard` in-process; stdout and stderr are kept apart, as a script sees them.
    Verifiers come from the session's `launcher`, started at the first export that needs one
    (a command that fails before exporting starts none)."""
    from click.testing import CliRunner

    from shipyard.cli import main

    runner = CliRunner()

    def launch_verifier():
        return request.getfixturevalue("launcher")()

    def start_check(*args):  # copy's proof children, forked as the verifiers are
        return request.getfixturevalue("launcher").start(*args)

    def invoke(*args: str):
        return runner.invoke(main, list(args), obj={"launch_verifier": launch_verifier,
                                                    "start_check": start_check})

    return invoke


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "repo"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow server for the session (support/mlflow_server.py)."""
    from support.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(mlflow_server):
    """The fault proxy (support/mlflow_proxy.py) in front of the session's MLflow server."""
    from support.mlflow_proxy import FaultProxy

    fault_proxy = FaultProxy(mlflow_server.uri)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(scope="session")
def staged(launcher, models, tmp_path_factory):
    """The small model exported and verified once, not published: (directory, manifest,
    timings) for support.register_faults.register_copy."""
    from support.register_faults import stage_once

    return stage_once(launcher, models, tmp_path_factory.mktemp("staged"))


@pytest.fixture(scope="session")
def requests_of_one_register(proxy, staged, tmp_path_factory):
    """The MLflow requests ("METHOD path") of one clean `register` of a new name (without the
    reachability check, which the command makes before exporting), as a list; its `states[k - 1]`
    (support.mlflow_proxy.ObservedRequests): the repository directory's files as request k
    arrived, a frozenset of (path relative to the repository, hidden ones included; size, None
    for a directory)."""
    from support.mlflow_proxy import ObservedRequests
    from support.register_faults import inconsistencies, register_copy

    repo_dir = tmp_path_factory.mktemp("count")
    states = []

    def files(_request: str) -> None:
        found = set()
        for folder, dirs, names in os.walk(repo_dir):
            for entry in (*dirs, *names):
                path = Path(folder, entry)
                found.add((path.relative_to(repo_dir).as_posix(),
                           None if entry in dirs else path.lstat().st_size))
        states.append(frozenset(found))

    proxy.arm(None, observe=files)
    try:
        result = register_copy(proxy.uri, repo_dir, "sweep-count", staged)
        requests = ObservedRequests(proxy.requests, states)
    finally:
        proxy.arm(None)
    assert (result.version, result.reused, result.aliases) == (1, False, {"candidate": 1})
    assert inconsistencies(proxy.uri, "sweep-count", repo_dir) == []
    print("\nthe MLflow requests of one register (*: the repository's files changed since the "
          "request before):\n" + "\n".join(
              f"{k:3d}{'*' if k > 1 and states[k - 1] != states[k - 2] else ' '} {r}"
              for k, r in enumerate(requests, 1)))
    return requests


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch):
    """Tests say which MLflow they use; a developer's MLFLOW_* settings must not leak in."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def tf_serving():
    """A started TF Serving test double on 127.0.0.1 (support/tf_serving_double.py), stopped
    after the test: `tf_serving.address` is its gRPC address. Importing it imports TensorFlow."""
    from support.tf_serving_double import TFServingDouble

    with TFServingDouble(load_retry_interval_s=0.05) as server:
        yield server


@pytest.fixture
def url():
    """A fresh in-memory object-store repository URL (fsspec memory://), removed after."""
    import fsspec

    location = f"memory://bucket-{uuid.uuid4().hex[:8]}/models"
    yield location
    fs = fsspec.filesystem("memory")
    if fs.exists(location):
        fs.rm(location, recursive=True)
