"""A failing command as a person sees it: the error paragraph, then where the libraries'
output went and its last lines that can explain the failure; `-v` streams that output
instead. Real `shipyard` processes; the registry is an address where nothing listens."""

from __future__ import annotations

import subprocess

import yaml
from support.processes import SHIPYARD, subprocess_env
from support.specs import SEQUENTIAL_SPEC

from shipyard.cli.console import LOG_DIR_ENV

TRACKING_DOWN = "http://127.0.0.1:1"  # nothing listens on port 1


def shipyard(*args: str, cwd) -> subprocess.CompletedProcess:
    env = subprocess_env() | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                              "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    env.pop(LOG_DIR_ENV, None)
    return subprocess.run([SHIPYARD, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_a_failure_ends_with_the_log_path_and_its_relevant_last_lines(tmp_path):
    model = tmp_path / "model"  # the registry is checked before the model is read
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    done = shipyard("register", str(model), "--spec", str(tmp_path / "spec.yaml"), "--repo", str(tmp_path / "repo"), "--name", "m",
                    "--tracking-uri", TRACKING_DOWN, cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    assert done.stdout == ""
    error = done.stderr[done.stderr.index("error: "):]
    assert error.startswith(f"error: MLflow at {TRACKING_DOWN}")
    logs = list((tmp_path / ".shipyard" / "logs").glob("register-*.log"))
    assert len(logs) == 1
    assert f"The libraries' output is in {logs[0]}; its last lines:" in error
    # urllib3's retry (the cause) and the failed step are shown; absl/TF INFO records are not.
    shown = [line.removeprefix("  | ") for line in error.splitlines() if line.startswith("  | ")]
    assert any(line.startswith("Retrying (Retry(") for line in shown), error
    assert shown[-1].startswith(f"check MLflow at {TRACKING_DOWN}: failed after"), error
    assert "Retrying (Retry(" in logs[0].read_text()


def test_verbose_streams_the_libraries_and_writes_no_log(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    quiet = shipyard("status", "--repo", str(tmp_path / "repo"), "--name", "m",
                     "--tracking-uri", uri, cwd=tmp_path)
    assert quiet.returncode == 2, quiet.stderr
    assert "Creating initial MLflow database tables" not in quiet.stderr
    (log,) = (tmp_path / ".shipyard" / "logs").glob("status-*.log")
    assert "Creating initial MLflow database tables" in log.read_text()

    (tmp_path / "mlflow.db").unlink()
    log.unlink()
    verbose = shipyard("-v", "status", "--repo", str(tmp_path / "repo"), "--name", "m",
                       "--tracking-uri", uri, cwd=tmp_path)
    assert verbose.returncode == 2, verbose.stderr
    assert "Creating initial MLflow database tables" in verbose.stderr
    assert "The libraries' output is in" not in verbose.stderr
    assert list((tmp_path / ".shipyard" / "logs").glob("*.log")) == []
