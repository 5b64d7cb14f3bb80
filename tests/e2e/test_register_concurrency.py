"""Concurrent `shipyard register` processes of one registered model against one real MLflow
server (SQLite backend) and one repository (issue 22, Deliver 4): SAME processes register one
model, DIFFERENT processes register one other model each, all started at once.

Checked afterwards: every command exits 0; every version N has directory N holding its
content and no directory is left without its version; no fingerprint is on two versions;
every run is FINISHED or FAILED with `shipyard.superseded_by`; the SAME commands all report
one version, and all but one say `reused: true`; `candidate` is on a published version.

Each process imports TensorFlow, which on 2 cores makes 8 of them about a minute: the default
suite runs 4 + 4 once. SHIPYARD_CONCURRENCY=SAME,DIFFERENT,REPEAT sets other sizes and runs
them REPEAT times (e.g. 4,4,5 for five repetitions).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from support.processes import SHIPYARD, subprocess_env
from support.specs import SEQUENTIAL_SPEC, write_spec


def _sizes() -> tuple[int, int, int]:
    raw = os.environ.get("SHIPYARD_CONCURRENCY", "4,4,1")
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


def _run_all(models: list[Path], spec: Path, repo: Path, name: str, uri: str,
             logs: Path) -> list[tuple[int, str, str, Path]]:
    """Starts one `shipyard register` per model at once; (exit code, stdout, stderr, log
    directory) of each, in order."""
    children = []
    for index, model in enumerate(models):
        log_dir = logs / f"p{index}"
        env = dict(subprocess_env(), SHIPYARD_LOG_DIR=str(log_dir))
        children.append((subprocess.Popen(
            [SHIPYARD, "register", str(model), "--spec", str(spec), "--repo", str(repo),
             "--name", name, "--tracking-uri", uri, "--serving-runtime", "none", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), log_dir))
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
    docs = [json.loads(out) for code, out, _, _ in results if code == 0]
    same_docs = docs[:same] if len(docs) == len(results) else []
    if len({d["version"] for d in same_docs}) > 1:
        problems.append(f"one content, versions {[d['version'] for d in same_docs]}")
    if same_docs and sorted(d["reused"] for d in same_docs) != [False] + [True] * (same - 1):
        problems.append(f"reused {[d['reused'] for d in same_docs]}")
    candidate = client.get_registered_model(name).aliases.get("candidate")
    if candidate is None or int(candidate) not in numbers:
        problems.append(f"candidate at {candidate}, versions {numbers}")
    return problems


def test_concurrent_registers_of_one_content_end_with_one_version(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    same, different, repeat = _sizes()
    spec = write_spec(tmp_path, SEQUENTIAL_SPEC)
    tiny = _tiny_models(tmp_path, different + 1)
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    for attempt in range(repeat):
        name = f"conc-{attempt}"
        repo = tmp_path / f"repo-{attempt}"
        started = time.monotonic()
        results = _run_all([tiny[0]] * same + tiny[1:], spec, repo, name, mlflow_server.uri,
                           tmp_path / f"logs-{attempt}")
        print(f"attempt {attempt}: {same}+{different} processes in "
              f"{time.monotonic() - started:.1f} s")
        failed = [i for i, (code, *_) in enumerate(results) if code != 0]
        assert not failed, _report(results)
        problems = _problems(client, name, repo, results, same)
        assert not problems, "\n".join(problems) + "\n" + _report(results)

