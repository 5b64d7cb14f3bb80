"""The `shipyard` command line as a process: start-up without TensorFlow, --import, and a kill
during the write. (Exit codes and --json in-process: integration/test_cli.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from support.processes import SHIPYARD, kill_session, subprocess_env
from support.specs import SEQUENTIAL_SPEC as SPEC
from support.specs import write_spec

# The subclassed test model's own input, `features` (the shared specs name theirs `x`).
FEATURES_SPEC = {"endpoints": [{"name": "serve", "method": "call",
                                "inputs": [{"name": "features", "shape": [None, 3],
                                            "dtype": "float32"}]}]}


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


def run_shipyard(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SHIPYARD, *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout)


def test_custom_classes_load_with_import(models, repo, tmp_path):
    spec = str(write_spec(tmp_path, FEATURES_SPEC))
    model = str(models.path("subclassed"))
    without = run_shipyard("export", model, "--spec", spec, "--repo", str(repo), "--name", "m")
    assert without.returncode == 1
    assert "pass --import MODULE" in without.stderr

    with_import = run_shipyard("export", model, "--spec", spec, "--repo", str(repo),
                               "--name", "m", "--import", "support.shipyard_test_models",
                               "--json")
    assert with_import.returncode == 0, with_import.stderr
    assert json.loads(with_import.stdout)["version"] == 1  # stdout is the JSON alone


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
    kill_session(child)  # the exporter and its verifier
    assert [p.name for p in (repo / "m").iterdir() if p.is_dir() and p.name.isdigit()] == []

    again = run_shipyard("export", model, "--spec", spec, "--repo", str(repo), "--name", "m",
                         "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 1
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1"]
