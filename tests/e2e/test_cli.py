"""The `shipyard` command line: contract, exit codes, --json, and start-up without TensorFlow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env

SHIPYARD = str(Path(sys.executable).parent / "shipyard")
SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}
FEATURES_SPEC = {"endpoints": [{"name": "serve", "method": "call",
                                "inputs": [{"name": "features", "shape": [None, 3],
                                            "dtype": "float32"}]}]}


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def python_without_tensorflow(code: str) -> subprocess.CompletedProcess:
    """Runs `code`, then fails unless TensorFlow and Keras stayed unimported."""
    check = ("\nheavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
             "assert not heavy, f'imported {heavy}'\n")
    return subprocess.run([sys.executable, "-c", "import sys\n" + code + check],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)


def test_help_answers_without_importing_tensorflow():
    done = python_without_tensorflow(
        "from shipyard.cli import run\n"
        "assert run(['--help']) == 0\nassert run(['export', '--help']) == 0\n"
        "assert run(['demo', '--help']) == 0\nassert run(['register', '--help']) == 0\n"
        "assert run(['alias', 'set', '--help']) == 0\n"
        "assert 'mlflow' not in sys.modules, 'help imported mlflow'\n")
    assert done.returncode == 0, done.stderr
    assert re.search(r"export\s+Export MODEL", done.stdout)
    assert re.search(r"register\s+Export and verify MODEL, record it in MLflow", done.stdout)
    for flag in ("--spec", "--repo", "--name", "--version", "--import", "--unsafe",
                 "--allow-breaking", "--json"):
        assert flag in done.stdout


def test_spec_errors_exit_2_without_importing_tensorflow(tmp_path):
    spec = write_spec(tmp_path, {"endpoints": [{"name": "serve", "method": "call",
                                                "inputs": [{"shape": [None], "dtype": "f32"}]}]})
    done = python_without_tensorflow(
        "from shipyard.cli import run\n"
        f"code = run(['export', 'model.keras', '--spec', {str(spec)!r}, '--repo', 'r', "
        "'--name', 'm'])\nassert code == 2, code\n")
    assert done.returncode == 0, done.stderr
    assert "endpoints[0].inputs[0].dtype: Input should be" in done.stderr
    assert "(got 'f32')" in done.stderr


def test_serving_commands_talk_to_servers_without_importing_tensorflow(tmp_path):
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    done = python_without_tensorflow(
        "import json, os\nos.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'] = '0'\n"
        "from shipyard.cli import run\n"
        "assert run(['push', '--help']) == 0 and run(['gc', '--help']) == 0\n"
        f"code = run(['status', '--repo', {str(tmp_path / 'repo')!r}, '--name', 'm', "
        "'--serving-address', '127.0.0.1:9', '--tracking-uri', 'http://127.0.0.1:9', "
        "'--json'])\nassert code == 6, code\n")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout[done.stdout.index("\n{\n"):])  # after the two helps
    assert [e["source"] for e in doc["errors"]] == ["registry", "server"]
    assert "cannot read model status at TF Serving 127.0.0.1:9" in doc["errors"][1]["message"]
    assert doc["versions"][0]["version"] == 1


@pytest.mark.integration
def test_json_output_is_the_document_alone(cli, models, repo, tmp_path):
    result = cli("export", str(models.path("sequential")), "--spec", str(write_spec(tmp_path, SPEC)),
                 "--repo", str(repo), "--name", "churn", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"name", "version", "path", "fingerprint", "endpoints",
                             "variable_collections", "parity"}
    assert document["name"] == "churn" and document["version"] == 1
    assert document["endpoints"] == ["serve"]
    assert Path(document["path"]) == (repo / "churn" / "1").resolve()
    assert 0 <= document["parity"]["serve"] <= 1e-5

    human = cli("export", str(models.path("sequential")), "--spec", str(write_spec(tmp_path, SPEC)),
                "--repo", str(repo), "--name", "churn")
    assert human.exit_code == 0, human.stderr
    assert f"Published churn version 2 at {(repo / 'churn' / '2').resolve()}" in human.stdout
    assert "endpoints: serve (max abs error" in human.stdout


@pytest.mark.integration
def test_exit_codes(cli, models, repo, tmp_path):
    spec = str(write_spec(tmp_path, SPEC))
    sequential = str(models.path("sequential"))

    bad_name = cli("export", sequential, "--spec", spec, "--repo", str(repo), "--name", "../x")
    assert bad_name.exit_code == 2
    assert "--name: '../x' is not a valid model name" in bad_name.stderr
    assert not repo.exists()

    no_gpu = cli("export", sequential, "--spec", spec, "--repo", str(repo), "--name", "m",
                 "--device", "/GPU:0")
    assert no_gpu.exit_code == 2
    assert "--device /GPU:0: this machine has no such device; it has /device:CPU:0" in \
        no_gpu.stderr
    assert not (repo / "m").exists()

    missing = cli("export", str(tmp_path / "nope.keras"), "--spec", spec, "--repo", str(repo),
                  "--name", "m")
    assert missing.exit_code == 1
    assert "MODEL: " in missing.stderr and "nope.keras does not exist" in missing.stderr

    first = cli("export", sequential, "--spec", spec, "--repo", str(repo), "--name", "m",
                "--version", "3")
    assert first.exit_code == 0, first.stderr
    exists = cli("export", sequential, "--spec", spec, "--repo", str(repo), "--name", "m",
                 "--version", "3")
    assert exists.exit_code == 3
    assert "already exists and published versions are never overwritten" in exists.stderr

    noisy = cli("export", str(models.path("noisy")), "--spec", spec, "--repo", str(repo),
                "--name", "noisy")
    assert noisy.exit_code == 4
    assert "exceeds the tolerance" in noisy.stderr
    assert not (repo / "noisy").exists()  # no version, no staging, no empty model folder

    wide_spec = str(write_spec(tmp_path, {"endpoints": [{**SPEC["endpoints"][0], "inputs": [
        {"name": "x", "shape": [None, 5], "dtype": "float32"}]}]}, "wide.yaml"))
    breaking = cli("export", str(models.path("sequential_wide")), "--spec", wide_spec,
                   "--repo", str(repo), "--name", "m")
    assert breaking.exit_code == 5
    assert "shape changed [None, 3] -> [None, 5]" in breaking.stderr
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["3"]


def run_shipyard(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SHIPYARD, *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout)


@pytest.mark.integration
@pytest.mark.slow
def test_custom_classes_load_with_import(models, repo, tmp_path):
    spec = str(write_spec(tmp_path, FEATURES_SPEC))
    model = str(models.path("subclassed"))
    without = run_shipyard("export", model, "--spec", spec, "--repo", str(repo), "--name", "m")
    assert without.returncode == 1
    assert "pass --import MODULE" in without.stderr

    with_import = run_shipyard("export", model, "--spec", spec, "--repo", str(repo),
                               "--name", "m", "--import", "shipyard_test_models", "--json")
    assert with_import.returncode == 0, with_import.stderr
    assert json.loads(with_import.stdout)["version"] == 1  # stdout is the JSON alone


@pytest.mark.integration
@pytest.mark.slow
def test_a_kill_during_the_write_leaves_no_version(models, repo, tmp_path):
    spec = str(write_spec(tmp_path, SPEC))
    model = str(models.path("sequential"))
    child = subprocess.Popen([SHIPYARD, "export", model, "--spec", spec, "--repo", str(repo),
                              "--name", "m"], env=subprocess_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    written = []
    while not written and time.monotonic() < deadline and child.poll() is None:
        written = list((repo / "m").glob(".staging-*/saved_model.pb")) if (repo / "m").exists() else []
        time.sleep(0.05)
    assert written, "the export never started writing"
    os.killpg(child.pid, signal.SIGKILL)  # the exporter and its verifier
    child.wait()
    assert [p.name for p in (repo / "m").iterdir() if p.is_dir() and p.name.isdigit()] == []

    again = run_shipyard("export", model, "--spec", spec, "--repo", str(repo), "--name", "m",
                         "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 1
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1"]
