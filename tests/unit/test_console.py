"""What a person sees: shipyard's lines on the terminal, everything else in the run's log
(cli.console), and steps that nest (core.progress)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console

from shipyard.cli import console
from shipyard.core.progress import LogProgress, RichProgress

# Runs in a child: pytest's own capture gives this process's sys.stdout no descriptor 1.
REDIRECTED_RUN = textwrap.dedent("""
    import logging, os, subprocess, sys
    from pathlib import Path
    from shipyard.cli import console

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    with console.libraries_to_log("export", Path(sys.argv[1])) as path:
        os.write(2, b"C++ record on descriptor 2\\n")
        print("a library's print")
        logging.getLogger("mlflow").info("a library's log record")
        subprocess.run(["sh", "-c", "echo a child process >&2"], check=True)
        logging.getLogger("shipyard.steps").info("shipyard's info, for the log")
        logging.getLogger("shipyard.steps").warning("shipyard's warning, for both")
        console.write_log("a step line, for the log")
        print("the result", file=console.out())
        print("a step", file=console.err())
    print("after the run", flush=True)
    print(path)
""")


def test_a_run_sends_descriptors_1_and_2_and_its_children_to_the_log(tmp_path):
    done = subprocess.run([sys.executable, "-c", REDIRECTED_RUN, str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *shown, path = done.stdout.splitlines()
    assert shown == ["the result", "after the run"]
    assert done.stderr.splitlines() == ["shipyard's warning, for both", "a step"]
    log = (tmp_path / "logs" / path.rsplit("/", 1)[-1]).read_text().splitlines()
    assert path.startswith(str(tmp_path / "logs" / "export-"))
    assert set(log) == {"C++ record on descriptor 2", "a library's print",
                        "a library's log record", "a child process",
                        "shipyard's info, for the log", "shipyard's warning, for both",
                        "a step line, for the log"}


def test_without_descriptors_nothing_is_redirected(tmp_path, capsys):
    # An in-process runner (click's CliRunner, pytest's capture) hands over buffers.
    with console.libraries_to_log("status", tmp_path / "logs") as path:
        print("still captured")
    assert path is None and not (tmp_path / "logs").exists()
    assert capsys.readouterr().out == "still captured\n"


def test_the_log_directory_is_the_env_then_the_workdir_then_dot_shipyard(monkeypatch, tmp_path):
    monkeypatch.delenv(console.LOG_DIR_ENV, raising=False)
    assert console.log_directory() == console.DEFAULT_LOG_DIR
    assert console.log_directory(tmp_path / "demo") == tmp_path / "demo" / "logs"
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "mine"))
    assert console.log_directory(tmp_path / "demo") == tmp_path / "mine"


def test_the_tail_keeps_lines_that_can_explain_a_failure(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("\n".join([
        "I0000 00:00:1764448000.1 1 cpu_feature_guard.cc:210] oneDNN custom operations are on",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "2026/11/29 20:30:26 INFO mlflow.store.db.utils: Creating initial MLflow database tables",
        "INFO:absl:Running driver for CsvExampleGen",
        "WARNING:absl:Using Any for unsupported type: typing.MutableMapping[str, typing.Any]",
        "Retrying (Retry(total=0)) after connection broken by 'NewConnectionError'",
        "",
        "check MLflow at http://127.0.0.1:1: failed after 3.3 s",
    ]))
    assert console.tail(log) == [
        "Retrying (Retry(total=0)) after connection broken by 'NewConnectionError'",
        "check MLflow at http://127.0.0.1:1: failed after 3.3 s"]
    assert console.tail(tmp_path / "gone.log") == []


def test_log_progress_shows_outer_steps_and_records_inner_ones():
    shown, recorded = [], []
    progress = LogProgress(shown.append, record=recorded.append)
    with progress.step("register the challenger"):
        with progress.step("verify in a fresh CPU-only process"):
            pass
    with pytest.raises(RuntimeError, match="the verifier died"):
        with progress.step("offline canary"):
            raise RuntimeError("the verifier died")
    assert [line.split(":")[0] for line in shown] == ["register the challenger",
                                                      "offline canary"]
    assert "offline canary: failed after" in shown[1]
    assert recorded[0].startswith("  verify in a fresh CPU-only process: done in")
    assert recorded[1].startswith("register the challenger: done in")


def test_log_progress_without_a_log_shows_every_step():
    shown = []
    progress = LogProgress(shown.append)
    with progress.step("outer"), progress.step("inner"):
        pass
    assert [line.split(":")[0] for line in shown] == ["inner", "outer"]


def test_rich_progress_ticks_outer_steps_and_crosses_a_failed_one():
    terminal = io.StringIO()
    recorded = []
    progress = RichProgress(Console(file=terminal, force_terminal=True, width=100,
                                    color_system=None), record=recorded.append)
    with progress.step("TFX pipeline"), progress.step("export"):
        pass
    with pytest.raises(ValueError, match="bad examples"):
        with progress.step("offline canary"):
            raise ValueError("bad examples")
    lines = [line for line in _rendered(terminal.getvalue()) if line]
    assert [line.split(" (")[0] for line in lines] == ["✓ TFX pipeline", "✗ offline canary"]
    assert [r.split(":")[0] for r in recorded] == ["  export", "TFX pipeline", "offline canary"]


def _rendered(raw: str) -> list[str]:
    """The lines left once the transient spinner's redraws are applied (pyte renders them)."""
    import pyte

    screen = pyte.Screen(100, 20)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display]


def test_only_the_newest_run_logs_are_kept_and_setup_log_stays(tmp_path):
    import os

    (tmp_path / "setup.log").write_text("setup: .venv is ready\n")
    os.utime(tmp_path / "setup.log", (0, 0))  # the oldest file in the folder
    for i in range(console.KEPT_LOGS + 5):
        old = tmp_path / f"export-20261129-{i:06d}-1.log"
        old.write_text("")
        os.utime(old, (1000 + i, 1000 + i))
    path = console._open_log_path(tmp_path, "status")
    runs = sorted(p.name for p in tmp_path.glob("*-*.log"))
    assert path.name in runs and len(runs) == console.KEPT_LOGS
    assert "export-20261129-000005-1.log" not in runs  # among the oldest, removed
    assert (tmp_path / "setup.log").is_file()


def test_a_log_removed_by_a_concurrent_run_does_not_stop_the_prune(tmp_path):
    """Commands run side by side prune one folder: a log listed may be gone when it is read.
    A dangling symlink with a run log's name stands for one (its stat fails the same way)."""
    import os

    for i in range(console.KEPT_LOGS + 5):
        old = tmp_path / f"push-20261130-{i:06d}-1.log"
        old.write_text("")
        os.utime(old, (1000 + i, 1000 + i))
    (tmp_path / "push-20261130-999999-2.log").symlink_to(tmp_path / "removed-meanwhile")
    path = console._open_log_path(tmp_path, "push")
    runs = [p for p in tmp_path.glob("push-*.log") if p.exists()]
    assert path in runs and len(runs) == console.KEPT_LOGS
