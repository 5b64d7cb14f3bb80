"""`shipyard validate --runner PortableRunner` against Beam's local job service and an
external SDK worker pool, each a process of its own on localhost (support/beam_portable.py):
the protocol Flink's, Spark's and Dataflow's Python workers speak. The workers run in the
pool's working directory, not the command's, so paths typed relative to the command's
directory reach them only because the command makes them absolute."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from support.beam_portable import PortableServices
from support.processes import SHIPYARD, kill_session, subprocess_env

ROWS = 40
RUN_TIMEOUT_S = 240  # a worker that cannot start makes Beam wait 300 s before it fails


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    with PortableServices(tmp_path_factory.mktemp("beam-services")) as started:
        yield started


@pytest.fixture(scope="module")
def workspace(published, models, tmp_path_factory) -> Path:
    """A directory as a user has it: the repository (model `v`: version 1, and version 2 to
    agree with), the source model and the examples, all named relative to it."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(published / "m", root / "repo" / "v")
    shutil.copy(models.path("sequential"), root / "model.keras")
    x = np.random.default_rng(3).standard_normal((ROWS, 3)).astype(np.float32)
    with tf.io.TFRecordWriter(str(root / "examples.tfrecord")) as writer:
        for row in x:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
                .SerializeToString())
    return root


# Relative paths, as anyone types them. --sample above ROWS keeps every example but takes them
# through the sampling combine too.
ARGS = ("validate", "--repo", "repo", "--name", "v", "--version", "1", "--examples",
        "examples.tfrecord", "--source", "model.keras", "--against", "2", "--sample", "1000",
        "--json")


def test_the_portable_runner_gives_the_direct_runners_results_from_relative_paths(
        cli, services, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    direct = cli(*ARGS, "--runner", "DirectRunner")
    assert direct.exit_code == 0, direct.stderr
    expected = json.loads(direct.stdout)
    # The default runner, in process, finds the same on the same examples.
    in_process = cli(*ARGS)
    assert in_process.exit_code == 0, in_process.stderr
    assert json.loads(in_process.stdout)["runner"] == "in-process"
    assert same_figures(json.loads(in_process.stdout), expected, ignore=("runner", "time"))

    started = time.monotonic()
    command = [SHIPYARD, *ARGS, "--output", "result.json", "--runner", "PortableRunner",
               "--", *services.beam_args(), "--temp_location", "tmp"]
    process = subprocess.Popen(command, cwd=workspace, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_session(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"validate on the portable runner ran over {RUN_TIMEOUT_S} s:\n{stderr}\n"
                    f"{services.logs()}")
    assert process.returncode == 0, f"{stderr}\n{services.logs()}"
    print(f"validate --runner PortableRunner: {time.monotonic() - started:.1f} s")
    portable = json.loads(stdout)

    assert portable["runner"] == "PortableRunner" and expected["runner"] == "DirectRunner"
    assert portable["examples"] == expected["examples"] == ROWS
    assert portable["source"] == expected["source"] == str(workspace / "model.keras")
    assert same_figures(portable, expected, ignore=("runner", "time")), (portable, expected)
    assert json.loads((workspace / "result.json").read_text()) == portable
    assert not (workspace / "tmp").exists() or not any((workspace / "tmp").iterdir())

    # Every local path the workers read or write, named by its flag; --output is written by
    # the command itself.
    for flag, path in (("--repo", "repo"), ("--examples", "examples.tfrecord"),
                       ("--source", "model.keras"), ("--temp_location", "tmp")):
        assert (f"warning: {flag} {workspace / path} is a path on this machine, but the "
                "workers of --runner PortableRunner may run on other machines") in stderr, \
            stderr
    assert "--output" not in stderr


def same_figures(got, expected, ignore=()) -> bool:
    """Equal documents, floats within 1e-9 relative: the runners may cut the examples into
    other batches, so sums of errors may add up in another order."""
    if isinstance(got, dict) and isinstance(expected, dict):
        keys = set(got) - set(ignore)
        return keys == set(expected) - set(ignore) and all(
            same_figures(got[k], expected[k]) for k in keys)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(same_figures, got, expected))
    if isinstance(got, float) and isinstance(expected, float):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    return got == expected
