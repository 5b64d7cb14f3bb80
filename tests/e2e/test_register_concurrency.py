"""Concurrent registrations of one registered model against one real MLflow server (SQLite
backend) and one repository (issue 22, Deliver 4): SAME processes register one content,
DIFFERENT processes register one other content each, all started at once.

Checked afterwards: every process exits 0; every version N has directory N holding its
content and no directory is left without its version; no fingerprint is on two versions;
every run is FINISHED, or FAILED with `shipyard.superseded_by`; the SAME processes all report
one version, all but one with `reused: true`; `candidate` is on a published version.

The default suite runs 4 + 4 processes once, each the MLflow half of `register`
(support/register_child.py: register_staged on a copy of an export the test made once), so
that none imports TensorFlow and eight fit on two cores in seconds. The whole commands -
`shipyard register` processes, each exporting and verifying (two TensorFlow processes
apiece: about 2 minutes for 4 + 4 on a busy 2-core machine) - run when
SHIPYARD_CONCURRENCY=SAME,DIFFERENT,REPEAT is set, REPEAT times (e.g. 4,4,5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.processes import SHIPYARD, subprocess_env
from support.specs import SEQUENTIAL_SPEC, write_spec


def _sizes() -> tuple[int, int, int] | None:
    raw = os.environ.get("SHIPYARD_CONCURRENCY")
    if not raw:
        return None
    same, different, repeat = (int(part) for part in raw.split(","))
    return same, different, repeat


def _tiny_models(directory: Path, count: int) -> list[Path]:
    """`count` small models of the sequential spec's input, each with other weights."""
    import keras

    paths = []
    for seed in range(count):
        path = directory / f"tiny-{seed}.keras"
        keras.utils.set_random_seed(100 + seed)
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="logits")]).save(path)
        paths.append(path)
    return paths


def _run_all(commands: list[list[str]], logs: Path) -> list[tuple[int, str, str, Path]]:
    """Starts every command at once; (exit code, stdout, stderr, log directory) of each."""
    children = []
    for index, command in enumerate(commands):
        log_dir = logs / f"p{index}"
        env = dict(subprocess_env(), SHIPYARD_LOG_DIR=str(log_dir))
        children.append((subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env),
                         log_dir))
    results = []
    for child, log_dir in children:
        out, err = child.communicate(timeout=900)
        results.append((child.returncode, out, err, log_dir))
    return results


def _report(results) -> str:
    """Everything each process said, for a failure's message."""
    parts = []
    for index, (code, out, err, log_dir) in enumerate(results):
        logs = "".join(p.read_text()[-3000:] for p in sorted(log_dir.glob("*.log")))
        parts.append(f"--- process {index}: exit {code}\nstdout: {out[-1000:]}\n"
                     f"stderr: {err[-3000:]}\nlog: {logs}")
    return "\n".join(parts)


def _document(out: str) -> dict:
    """`--json`'s document (the whole of stdout), or register_child's (its last line: MLflow's
    client prints its run links before it)."""
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return json.loads(out.strip().splitlines()[-1])


def _problems(client, name: str, repo: Path, results, same: int) -> list[str]:
    from shipyard.core.manifest import read_manifest

    problems = []
    versions = client.search_model_versions(f"name='{name}'")
    numbers = sorted(int(v.version) for v in versions)
    directories = sorted(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    if numbers != directories:
        problems.append(f"versions {numbers} but directories {directories}")
    fingerprints = [v.tags.get("shipyard.fingerprint") for v in versions]
    if len(set(fingerprints)) != len(fingerprints):
        problems.append(f"a fingerprint on two versions: {sorted(fingerprints)}")
    for v in versions:
        on_disk = read_manifest(repo / name / v.version) if (repo / name / v.version).is_dir() \
            else None
        if on_disk is None or on_disk.fingerprint != v.tags.get("shipyard.fingerprint"):
            problems.append(f"directory {v.version} does not hold version {v.version}'s content")
        if v.tags.get("shipyard.published") != "true":
            problems.append(f"version {v.version} published={v.tags.get('shipyard.published')}")
    experiment = client.get_experiment_by_name(f"shipyard/{name}")
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        status, superseded = run.info.status, run.data.tags.get("shipyard.superseded_by")
        if not (status == "FINISHED" and superseded is None
                or status == "FAILED" and superseded):
            problems.append(f"run {run.info.run_id} {status}, superseded_by={superseded}")
    docs = [_document(out) for code, out, _, _ in results if code == 0]
    same_docs = docs[:same] if len(docs) == len(results) else []
    if len({d["version"] for d in same_docs}) > 1:
        problems.append(f"one content, versions {[d['version'] for d in same_docs]}")
    if same_docs and sorted(d["reused"] for d in same_docs) != [False] + [True] * (same - 1):
        problems.append(f"reused {[d['reused'] for d in same_docs]}")
    candidate = client.get_registered_model(name).aliases.get("candidate")
    if candidate is None or int(candidate) not in numbers:
        problems.append(f"candidate at {candidate}, versions {numbers}")
    return problems


def _check(results, client, name: str, repo: Path, same: int) -> None:
    failed = [i for i, (code, *_) in enumerate(results) if code != 0]
    assert not failed, _report(results)
    problems = _problems(client, name, repo, results, same)
    assert not problems, "\n".join(problems) + "\n" + _report(results)


def test_concurrent_registrations_of_one_content_end_with_one_version(launcher, mlflow_server,
                                                                      tmp_path):
    from mlflow import MlflowClient
    from support.exports import export

    same, different = 4, 4
    exports = []
    for model in _tiny_models(tmp_path, different + 1):
        result = export(launcher, model, SEQUENTIAL_SPEC, tmp_path / "exports",
                        name=model.stem)
        exports.append(result.path)
    repo, name = tmp_path / "repo", "conc"
    started = time.monotonic()
    results = _run_all([[sys.executable, "-m", "support.register_child", mlflow_server.uri,
                         str(repo), name, str(path)]
                        for path in [exports[0]] * same + exports[1:]], tmp_path / "logs")
    print(f"{same}+{different} processes in {time.monotonic() - started:.1f} s")
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    _check(results, client, name, repo, same)


@pytest.mark.skipif(_sizes() is None, reason="whole `shipyard register` commands at once: "
                    "set SHIPYARD_CONCURRENCY=SAME,DIFFERENT,REPEAT (e.g. 4,4,5)")
def test_concurrent_register_commands_of_one_content_end_with_one_version(mlflow_server,
                                                                          tmp_path):
    from mlflow import MlflowClient

    same, different, repeat = _sizes()
    spec = write_spec(tmp_path, SEQUENTIAL_SPEC)
    tiny = _tiny_models(tmp_path, different + 1)
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    for attempt in range(repeat):
        name, repo = f"conc-cli-{attempt}", tmp_path / f"repo-{attempt}"
        started = time.monotonic()
        results = _run_all([[SHIPYARD, "register", str(model), "--spec", str(spec), "--repo",
                             str(repo), "--name", name, "--tracking-uri", mlflow_server.uri,
                             "--serving-runtime", "none", "--json"]
                            for model in [tiny[0]] * same + tiny[1:]],
                           tmp_path / f"logs-{attempt}")
        print(f"attempt {attempt}: {same}+{different} commands in "
              f"{time.monotonic() - started:.1f} s")
        _check(results, client, name, repo, same)
