"""Shared fixtures. TensorFlow is imported once per test process, lazily, by the fixtures that
need it; pure tests (spec, signatures, repository, CLI help) never import it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The serving-runtime check (a second TensorFlow in its own environment) is off unless a test
# is about it: those pass --serving-runtime / serving_runtime explicitly (test_runtime_check.py).
os.environ["SHIPYARD_SERVING_RUNTIME"] = "none"


@pytest.fixture(scope="session")
def launcher():
    """Verifiers started ahead of need, so each export finds one that imported TensorFlow."""
    from shipyard.exporter.verifier import PrefetchingLauncher

    prefetching = PrefetchingLauncher()
    yield prefetching
    prefetching.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """The test models, each built and saved once per session (see test_models.py)."""
    import shipyard_test_models

    return shipyard_test_models.ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture
def cli(launcher):
    """Runs `shipyard` in-process; stdout and stderr are kept apart, as a script sees them."""
    from click.testing import CliRunner

    from shipyard.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), obj={"launch_verifier": launcher})

    return invoke


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "repo"


def subprocess_env() -> dict[str, str]:
    """Environment for `shipyard` child processes: test models importable, TF quiet."""
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow server for the session (see mlflow_server.py)."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch):
    """Tests say which MLflow they use; a developer's MLFLOW_* settings must not leak in."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def tf_serving():
    """A started TF Serving test double on 127.0.0.1 (tests/tf_serving_double.py), stopped after
    the test: `tf_serving.address` is its gRPC address. Importing it imports TensorFlow."""
    from tf_serving_double import TFServingDouble

    with TFServingDouble() as server:
        yield server
