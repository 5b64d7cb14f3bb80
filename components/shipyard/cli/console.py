"""Where a command run's output goes: shipyard's own lines to the terminal, everything else to
a log file.

TensorFlow's C++ logging, absl, TFX, Beam, MLflow and kfp write to file descriptors 1 and 2,
in this process and in every child it starts (the verifier, kfp.local tasks, Beam workers).
Replacing `sys.stdout` catches none of the C++ writes and none of the children, so a command
run points descriptors 1 and 2 at `<log dir>/<command>-<time>.log` and keeps duplicates of the
terminal's descriptors for shipyard's own lines: progress, the `shipyard` loggers (warnings
that matter), the result and the error. `-v/--verbose` skips all of this and streams as the
libraries write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

LOG_DIR_ENV = "SHIPYARD_LOG_DIR"
DEFAULT_LOG_DIR = Path(".shipyard") / "logs"
KEPT_LOGS = 50  # per directory: scheduled runs would otherwise fill it without end
TAIL_LINES = 8

# Lines that say nothing about a failure: INFO records (absl/TensorFlow's C++ prefix
# `I1129 20:28:01.123`, Python's `INFO:absl:`, MLflow's `... INFO mlflow...`), absl's C++
# WARNING records, TFX's typing notices and Beam's harness shutdown.
_CHATTER = re.compile(
    r"^([IW]\d{4} \d\d:\d\d|INFO:|.*\bINFO\b|WARNING: All log messages before absl|"
    r".*Using Any for unsupported type|.*(SDK Harness|Done consuming work|Closing all cached))")


class _Streams:
    """The terminal's stdout and stderr while a run's descriptors point at its log."""

    out: TextIO | None = None
    err: TextIO | None = None
    log_path: Path | None = None


_current = _Streams()


def out() -> TextIO:
    """Where results go: the terminal's stdout (fd 1 before the run moved it)."""
    return _current.out or sys.stdout


def err() -> TextIO:
    """Where progress, warnings and errors go: the terminal's stderr."""
    return _current.err or sys.stderr


def log_path() -> Path | None:
    """The running command's log file, None when nothing is redirected."""
    return _current.log_path


def write_log(line: str) -> None:
    """One of shipyard's own lines into the running command's log, beside the libraries'."""
    print(line, file=sys.stderr, flush=True)  # descriptor 2 is the log during a run


def log_directory(workdir: Path | None = None) -> Path:
    """$SHIPYARD_LOG_DIR, else `<workdir>/logs` for commands that own a workdir (the demo),
    else `.shipyard/logs` under the working directory."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    return workdir / "logs" if workdir is not None else DEFAULT_LOG_DIR


@contextlib.contextmanager
def libraries_to_log(command: str, directory: Path) -> Iterator[Path | None]:
    """Runs the block with descriptors 1 and 2 on a new log file in `directory` and yields its
    path. Yields None and changes nothing when stdout or stderr has no descriptor (an
    in-process test runner's buffers): there is no terminal to keep clean."""
    if not _has_descriptors() or _current.log_path is not None:
        yield None
        return
    path = _open_log_path(directory.absolute(), command)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal_out = _text_stream(saved[0], sys.stdout)
    terminal_err = _text_stream(saved[1], sys.stderr)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    handler = _TerminalHandler(logging.WARNING)
    shipyard_log = logging.getLogger("shipyard")
    shipyard_log.addHandler(handler)
    _current.out, _current.err, _current.log_path = terminal_out, terminal_err, path
    try:
        yield path
    finally:
        shipyard_log.removeHandler(handler)
        for stream in (sys.stdout, sys.stderr, terminal_out, terminal_err):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
        _current.out = _current.err = _current.log_path = None


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The log's last `lines` lines that can explain a failure (chatter left out)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    relevant = [line for line in text.splitlines() if line.strip() and not _CHATTER.match(line)]
    return relevant[-lines:]


def _has_descriptors() -> bool:
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _open_log_path(directory: Path, command: str) -> Path:
    """A new log path in `directory`; in the temporary directory when that cannot be created
    (a read-only working directory must not stop the command)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{command}-{stamp}-{os.getpid()}.log"
    for candidate in (directory, Path(tempfile.gettempdir()) / "shipyard-logs"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            (candidate / name).touch()
        except OSError:
            continue
        _prune(candidate)
        return candidate / name
    return Path(os.devnull)


# `<command>-<date>-<time>-<pid>.log`: only run logs are pruned (setup.log shares the folder).
_RUN_LOG = "*-" + "[0-9]" * 8 + "-" + "[0-9]" * 6 + "-*.log"


def _prune(directory: Path) -> None:
    logs = []
    for path in directory.glob(_RUN_LOG):
        # Commands run side by side prune the same folder: a log listed here may be gone
        # by the time it is read (eight concurrent pushes failed on exactly that).
        with contextlib.suppress(OSError):
            logs.append((path.stat().st_mtime, path))
    logs.sort(reverse=True)
    for _, old in logs[KEPT_LOGS:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _text_stream(descriptor: int, like: TextIO) -> TextIO:
    return open(descriptor, "w", buffering=1, closefd=False,
                encoding=getattr(like, "encoding", None) or "utf-8", errors="replace")


class _TerminalHandler(logging.Handler):
    """shipyard's own warnings on the terminal too; all its records reach the log through
    the root handler, beside the libraries' lines they explain."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err().write(self.format(record) + "\n")
        except (OSError, ValueError):
            self.handleError(record)
