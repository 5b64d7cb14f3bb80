"""The `shipyard` command line in-process on real exports: the --json document alone on stdout,
and the exit code of each kind of failure. (As processes: e2e/test_cli.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from support.specs import SEQUENTIAL_SPEC as SPEC
from support.specs import write_spec


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
