"""Running `shipyard` and Python as child processes, as a user or a job runs them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.paths import TESTS_DIR

SHIPYARD = str(Path(sys.executable).parent / "shipyard")


def subprocess_env() -> dict[str, str]:
    """Environment for `shipyard` child processes: the support package importable (so
    `--import support.shipyard_test_models` loads the test models' custom classes), TF quiet."""
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="2")


def run_until_killed(arguments: list[str], proxy, timeout: float = 600) -> tuple[int, str]:
    """Runs `shipyard ARGUMENTS` as its own session, the victim of the fault proxy's armed
    "kill"; returns (its return code, its stderr) once it and its children are gone."""
    child = subprocess.Popen([SHIPYARD, *arguments], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=subprocess_env(),
                             start_new_session=True)
    proxy.set_victim(child.pid)
    try:
        _, err = child.communicate(timeout=timeout)
    finally:
        kill_session(child)  # its children (verifier, proof checks), if the kill orphaned them
    return child.returncode, err.decode(errors="replace")


def kill_session(leader: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILLs every process of the session `leader` started (its process group), as a killed
    job is, and waits until the kernel has torn them all down.

    `wait()` reaps the leader only. Its children are reaped later, by init; until they are
    gone, one caught between fork and exec still holds its parent's descriptors, flocks
    included, and a check made right after the kill would see a live owner."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    deadline = time.monotonic() + timeout
    while _running_members(leader.pid):
        assert time.monotonic() < deadline, f"process group {leader.pid} outlived SIGKILL"
        time.sleep(0.02)


def _running_members(group: int) -> list[int]:
    """Processes of process group `group` that have not exited yet (zombies have: the kernel
    released their files before they became zombies)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            running.append(int(stat.parent.name))
    return running
