"""How the verifier and reference children start: as fresh interpreters, or forked from a
process that has already imported TensorFlow.

Forked is the default of shipyard's own program (`shipyard ...`, `python -m shipyard`: see
`fork_children_by_default`), and of test sessions and long-lived workers that ask for it
(verifier.PrefetchingLauncher). A library caller (a TFX component, a KFP component's Python
function) gets fresh interpreters: the fork server is one per process, and its environment
(CUDA hidden) would be inherited by any forkserver child that process later starts for itself.
`SHIPYARD_CHILDREN=fresh` turns forking off for the program too.

Why forking: each export starts two children, and each pays TensorFlow's import, about 5
CPU-seconds here (bench/README.md). A test session or a long-lived worker that exports a
hundred models spends most of its CPU on those imports. `ForkedStarter` keeps one server
process that has imported TensorFlow (`python -m shipyard.exporter.children` is never run;
multiprocessing's forkserver preloads zygote.py) and forks each child
from it.

Why a forked child still proves what a fresh process proves:
- The server imports TensorFlow the verifier's way (without Keras, with CUDA hidden) and
  nothing of the export: no model, no custom class, none of shipyard's loading code. The
  reference child imports Keras itself, after the fork, as a fresh process would.
- It runs no TensorFlow op, so TensorFlow has started no thread pool that a fork would lose.
  The only other thread it has is OpenBLAS's pool (numpy's), which OpenBLAS shuts down around
  a fork (pthread_atfork). A child refuses to run if the import started any other thread
  (zygote.py).
- Each child gets the environment, working directory and sys.path of the process that asks
  for it, at that moment (multiprocessing's spawn preparation), not the server's.

multiprocessing's forkserver does the parts that are easy to get wrong: it passes the
children's file descriptors, reaps them and reports their exit codes.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.reduction
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

# What both children need before TensorFlow is imported: a model exported on a GPU worker must
# load and answer on CPU, as TF Serving's CPU image does.
CHILD_ENVIRONMENT = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class PassedFd:
    """A file descriptor handed to the child as one of its arguments (by number)."""

    fd: int


class Child(Protocol):
    """What VerifierProcess and ReferenceProcess use of a child (subprocess.Popen has it)."""

    pid: int
    stdin: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Starter(Protocol):
    def __call__(self, module: str, args: list[str | PassedFd], log: Path) -> Child: ...


def fresh_process(module: str, args: list[str | PassedFd], log: Path) -> Child:
    """`python -m module args...` in a new interpreter; stdin a pipe, stdout and stderr `log`."""
    passed = tuple(a.fd for a in args if isinstance(a, PassedFd))
    argv = [str(a.fd) if isinstance(a, PassedFd) else a for a in args]
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module, *argv], stdin=subprocess.PIPE, stdout=log_file,
            stderr=subprocess.STDOUT, env=dict(os.environ, **CHILD_ENVIRONMENT),
            pass_fds=passed)


CHILDREN_VARIABLE = "SHIPYARD_CHILDREN"
_forked_by_default = False
_shared_forked: ForkedStarter | None = None


def fork_children_by_default() -> None:
    """Called by shipyard's program at start: the process is ours, so its children may be
    forked from one fork server (one TensorFlow import for all of them, instead of one each:
    about 3 CPU-seconds less per export here, docs/performance.md)."""
    global _forked_by_default
    _forked_by_default = True


def choose_children(setting: str | None, *, program: bool, forkserver: bool,
                    daemon: bool) -> str:
    """"forked" or "fresh": $SHIPYARD_CHILDREN (`setting`) if given, else forked for
    shipyard's own program. Forked needs multiprocessing's forkserver (not on Windows) and a
    process that may have children (a daemonic multiprocessing worker may not)."""
    if setting not in (None, "", "forked", "fresh"):
        from shipyard.core.errors import UsageError

        raise UsageError(f"{CHILDREN_VARIABLE}={setting!r}: expected 'forked' or 'fresh' (how "
                         "the verifier and reference children start); unset it for the default")
    wanted = setting or ("forked" if program else "fresh")
    return "forked" if wanted == "forked" and forkserver and not daemon else "fresh"


def default_starter() -> Starter:
    """How this process starts verifier and reference children when its caller did not say."""
    global _shared_forked
    choice = choose_children(os.environ.get(CHILDREN_VARIABLE), program=_forked_by_default,
                             forkserver="forkserver" in multiprocessing.get_all_start_methods(),
                             daemon=bool(multiprocessing.current_process().daemon))
    if choice == "fresh":
        return fresh_process
    _shared_forked = _shared_forked or ForkedStarter()
    return _shared_forked


class ForkedStarter:
    """Starts children by forking them from a server that has imported TensorFlow.

    The server starts with the first child (TensorFlow's import: seconds); `close` ends it.
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["shipyard.exporter.zygote"])
        self._started = False

    def __call__(self, module: str, args: list[str | PassedFd], log: Path) -> Child:
        if not self._started:
            self._start_server()
        return ForkedChild(self._context, module, args, log)

    def _start_server(self) -> None:
        # The server's environment is the one TensorFlow is imported under.
        saved = {name: os.environ.get(name) for name in CHILD_ENVIRONMENT}
        os.environ.update(CHILD_ENVIRONMENT)
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self._started = True


class _Fd:
    """Pickles as a descriptor the forkserver duplicates into the child."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_detached, (multiprocessing.reduction.DupFd(self.fd),))


def _detached(dup: Any) -> int:
    return dup.detach()


class ForkedChild:
    """A child forked by the server, behind subprocess.Popen's methods."""

    def __init__(self, context: Any, module: str, args: list[str | PassedFd],
                 log: Path) -> None:
        stdin_read, stdin_write = os.pipe()
        wrapped = [_Fd(a.fd) if isinstance(a, PassedFd) else a for a in args]
        self._process = context.Process(
            target=_run_module, daemon=True,
            args=(module, wrapped, _Fd(stdin_read), str(log),
                  dict(os.environ, **CHILD_ENVIRONMENT)))
        try:
            self._process.start()
        finally:
            os.close(stdin_read)
        self.pid: int = self._process.pid
        self.stdin: IO[bytes] | None = os.fdopen(stdin_write, "wb")

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
        return code

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()


# ---------------------------------------------------------------------------------------------
# The children's side (and the server's): how they import TensorFlow, and how a forked child
# is made to look like a fresh one.


KERAS_EAGER_IMPORT = "keras.src.optimizers"


def import_tensorflow_without_keras() -> Any:
    """`import tensorflow`, minus the import of all of Keras that its __init__ makes eagerly.

    TensorFlow's __init__ imports keras.src.optimizers so that Keras classes register with the
    SavedModel loader, and carries on if that import fails. A version is served by TF
    Serving's C++ loader, which has no Keras at all; the verifier loads it the same way
    without it. Blocking that one import (a None entry in sys.modules stops it before any
    parent package is imported) makes the fresh process's TensorFlow import about half as
    long here and its memory ~160 MiB smaller (bench/README.md). Keras stays importable
    afterwards: --import modules may need it.
    """
    blocked = KERAS_EAGER_IMPORT not in sys.modules
    if blocked:
        sys.modules[KERAS_EAGER_IMPORT] = None  # type: ignore[assignment]
    try:
        import tensorflow as tf
    finally:
        if blocked and sys.modules.get(KERAS_EAGER_IMPORT, "") is None:
            del sys.modules[KERAS_EAGER_IMPORT]
    return tf


def import_tensorflow_as_fresh() -> Any:
    """`import tensorflow` as a fresh process makes it, with the eager import of Keras's
    optimizers (their SavedModel registrations), also in a child forked from a server that
    imported TensorFlow without it: the reference loads the source as a user's process would."""
    tf = importlib.import_module("tensorflow")
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")
    with contextlib.suppress(ImportError, AttributeError):  # as TensorFlow's __init__ does
        importlib.import_module("tf_keras.src.optimizers" if legacy else KERAS_EAGER_IMPORT)
    return tf


def _run_module(module: str, args: list[Any], stdin: int, log: str,
                environment: dict[str, str]) -> None:
    """In the forked child: the same stdin, stdout, stderr, argv and environment that
    `fresh_process` gives, then the module's `_main`, whose result is the exit code."""
    os.environ.clear()
    os.environ.update(environment)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.dup2(stdin, 0)
    os.close(stdin)
    sys.stdin = open(0, closefd=False)  # multiprocessing gave the child /dev/null
    sys.argv = [module, *(str(a) for a in args)]
    from shipyard.exporter import zygote

    if zygote.THREADS_STARTED_BY_IMPORT:
        print(f"shipyard: the fork server's TensorFlow import started threads "
              f"({zygote.THREADS_STARTED_BY_IMPORT}) that a fork would lose; start this child "
              f"as a fresh process ({CHILDREN_VARIABLE}=fresh, or VerifierProcess's default "
              "starter)", file=sys.stderr)
        sys.exit(70)
    sys.exit(importlib.import_module(module)._main())
