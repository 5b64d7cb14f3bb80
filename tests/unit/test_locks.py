"""Work directories in $TMPDIR owned through an flock (files/locks.py): a concurrent run's
cleanup never takes a live run's directory, and a killed run's is removed."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from shipyard.files.locks import (
    HIDDEN_PREFIX,
    UNLOCKED_GRACE_S,
    OwnedWorkdir,
    remove_abandoned_workdirs,
)

PREFIX = "shipyard-locktest-"


def _create_and_use(tmpdir: str, count: int) -> list[str]:
    """Creates, writes into and removes `count` work directories; returns what failed."""
    import tempfile

    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = None
    failures = []
    for _ in range(count):
        try:
            owned = OwnedWorkdir(PREFIX)
            (owned.path / "verifier.log").write_text("a live run writes here")
            owned.remove()
        except OSError as err:
            failures.append(f"{type(err).__name__}: {err}")
    return failures


def test_concurrent_runs_never_remove_each_others_live_directories(tmp_path):
    """Each new directory's cleanup runs while the others create theirs. Before the lock was
    taken under a hidden name, 10 of 1800 creations failed here (6 processes x 300)."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_create_and_use, [(str(tmp_path), 150)] * 4)

    assert [f for failures in results for f in failures] == []
    assert list(tmp_path.iterdir()) == []


def test_a_live_directory_is_kept_and_a_killed_runs_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    live = OwnedWorkdir(PREFIX)
    assert live.path.name.startswith(PREFIX) and (live.path / ".owner.lock").is_file()
    killed = tmp_path / f"{PREFIX}killed"
    killed.mkdir()
    (killed / ".owner.lock").touch()  # its owner's flock went with its process

    assert remove_abandoned_workdirs(PREFIX) == [killed]
    assert live.path.is_dir()
    live.remove()


@pytest.mark.parametrize("age_s, removed", [(0, False), (UNLOCKED_GRACE_S + 60, True)])
def test_a_directory_killed_before_its_rename_is_removed_once_old(tmp_path, age_s, removed):
    hidden = tmp_path / f"{HIDDEN_PREFIX}{PREFIX}abc"
    hidden.mkdir()
    (hidden / ".owner.lock").touch()
    then = time.time() - age_s
    os.utime(hidden, (then, then))

    assert (remove_abandoned_workdirs(PREFIX, tmp_path) == [hidden]) is removed
    assert hidden.exists() is not removed


def test_the_hidden_name_is_never_matched_by_the_prefix():
    assert not Path(f"{HIDDEN_PREFIX}{PREFIX}x").match(f"{PREFIX}*")
