"""The verifier's and the reference's children, forked from a server that has imported
TensorFlow (exporter/children.py): each gets what a fresh `python -m` process gets (stdin,
log, passed descriptors, environment, working directory, exit code), with TensorFlow imported
without Keras and without any thread of TensorFlow's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support.paths import TESTS_DIR

from shipyard.exporter.children import ForkedStarter, PassedFd, fresh_process


@pytest.fixture(scope="module")
def forked():
    return ForkedStarter()


@pytest.mark.parametrize("starter", ["fresh", "forked"])
def test_a_child_gets_what_a_fresh_process_gets(starter, forked, tmp_path, monkeypatch):
    start = forked if starter == "forked" else fresh_process
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHIPYARD_PROBE", "set after the server started")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # a fresh process finds support/ so
    reply_read, reply_write = os.pipe()
    child = start("support.child_probe", [str(tmp_path / "facts.json"), PassedFd(reply_write)],
                  tmp_path / "child.log")
    os.close(reply_write)
    child.stdin.write(b"job 3\n")
    child.stdin.close()

    assert child.wait(timeout=120) == 3
    with os.fdopen(reply_read) as replies:
        assert replies.read() == "reply\n"
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["stdin"] == "job 3\n"
    assert facts["cwd"] == str(tmp_path)
    assert facts["environment"] == {"CUDA_VISIBLE_DEVICES": "",
                                    "SHIPYARD_PROBE": "set after the server started"}
    assert facts["argv"][0] == str(tmp_path / "facts.json")
    assert facts["keras_imported"] is False  # the verifier's TensorFlow
    assert facts["keras_optimizers_registered"] is True  # the reference's, as a fresh import
    assert facts["threads_started_by_import"] == []
    log = (tmp_path / "child.log").read_text()
    assert "probe's stdout" in log and "probe's stderr" in log
    if starter == "forked":
        assert facts["tensorflow_imported"] is True  # the import the server paid once


def test_a_forked_child_can_be_waited_for_and_killed(forked, tmp_path):
    child = forked("support.child_probe", [str(tmp_path / "facts.json")], tmp_path / "log")
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired, match=str(child.pid)):
        child.wait(timeout=0.5)  # it waits for its stdin
    child.kill()
    assert child.wait(timeout=30) == -9
    assert child.poll() == -9
    assert not (tmp_path / "facts.json").exists()
