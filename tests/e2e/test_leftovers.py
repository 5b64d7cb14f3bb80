"""Work directories of killed runs in $TMPDIR are removed by the next run.

The verifier's `shipyard-verify-*` and the serving-runtime check's `shipyard-runtime-*`
directories are owned through an flock held by the exporting process (as staging directories
are): a run SIGKILLed mid-export leaves its directory unlocked, and the next verifier or check
start removes it; a live run's directory is left alone. Real processes, real SIGKILLs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.processes import kill_session, subprocess_env


@pytest.fixture
def tmpdir_of_runs(tmp_path, monkeypatch) -> Path:
    """A private $TMPDIR for this test's runs and for this process."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return directory


def start_run(code: str) -> tuple[subprocess.Popen, list[str]]:
    """A Python process that runs `code`, prints its lines, then sleeps until killed."""
    child = subprocess.Popen([sys.executable, "-c", code + "\nimport time; time.sleep(120)"],
                             stdout=subprocess.PIPE, text=True, env=subprocess_env(),
                             start_new_session=True)
    lines = [child.stdout.readline().strip(), child.stdout.readline().strip()]
    return child, lines


def kill_run(child: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started (its session), as a killed job is."""
    kill_session(child)


def test_a_killed_runs_verifier_directory_is_removed_by_the_next_verifier(tmpdir_of_runs):
    from shipyard.exporter.verifier import VerifierProcess

    code = ("from shipyard.exporter.verifier import VerifierProcess\n"
            "v = VerifierProcess()\nprint(v.workdir, flush=True)\nprint(v.pid, flush=True)")
    live, (live_dir, _) = start_run(code)
    killed, (killed_dir, _) = start_run(code)
    try:
        kill_run(killed)
        assert Path(killed_dir).is_dir()  # what a killed run leaves today
        old = tmpdir_of_runs / "shipyard-verify-old0000"  # from a shipyard without the lock
        old.mkdir()
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        young = tmpdir_of_runs / "shipyard-verify-new0000"  # being created this instant
        young.mkdir()

        verifier = VerifierProcess()
        try:
            assert not Path(killed_dir).exists() and not old.exists()
            assert Path(live_dir).is_dir() and young.is_dir()  # their owners may be alive
            assert verifier.workdir.is_dir()
        finally:
            verifier.close()
        assert not verifier.workdir.exists()
    finally:
        kill_run(live)
    assert sorted(p.name for p in tmpdir_of_runs.iterdir()) == sorted([Path(live_dir).name,
                                                                        young.name])


def test_a_killed_runs_runtime_check_directory_is_removed_by_the_next_check(
        tmpdir_of_runs, tmp_path, monkeypatch):
    # An empty cache and uv offline: the check's environment fails fast, as without network;
    # the work directory is made before that, which is what this test is about.
    monkeypatch.setenv("SHIPYARD_CACHE_DIR", str(tmp_path / "shipyard-cache"))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_OFFLINE", "1")
    from shipyard.exporter.runtime import RuntimeCheck, choose_runtime

    code = ("from shipyard.exporter.runtime import RuntimeCheck, choose_runtime\n"
            "c = RuntimeCheck(choose_runtime('2.19'))\nprint(c.workdir, flush=True)\n"
            "print('started', flush=True)")
    killed, (killed_dir, _) = start_run(code)
    kill_run(killed)
    assert Path(killed_dir).is_dir()

    check = RuntimeCheck(choose_runtime("2.19"))
    try:
        assert not Path(killed_dir).exists()
        assert check.workdir.is_dir()
    finally:
        check.close()
    assert list(tmpdir_of_runs.iterdir()) == []
