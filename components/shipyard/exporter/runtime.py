"""The serving-runtime check: does the version load and answer on the TensorFlow that TF
Serving's image runs?

Why: shipyard exports with the project's TensorFlow (2.21), while the Deployment runs
`tensorflow/serving:2.19.0`, built on TensorFlow 2.19. A graph naming an op, attr or dtype that
the older runtime lacks loads fine here and fails only in the cluster ("Op type not registered",
"NodeDef mentions attr ... not in Op"). TFX's InfraValidator catches this by starting the real
image; we cannot run the image here, but we can run its TensorFlow.

How: a virtual environment with `tensorflow-cpu==<runtime>.*` (and `tensorflow-serving-api`'s
protos, without dependencies) is created with uv on first use, in the user cache directory,
and reused afterwards, so the check works offline once that environment exists. In it,
`runtime_check.py` loads the version as TF Serving does (the TF1 session loader, tags
{serve}) and replays the version's warmup requests through their signatures; the outputs come
back here to be compared with the original model's.

Like the verifier, the check process is started when the export starts, so creating the
environment (first use) and importing TensorFlow overlap the export. This module imports no
TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.core.errors import ShipyardError, UsageError, VerificationError
from shipyard.core.images import DEFAULT_SERVING_RUNTIME, TF_SERVING_IMAGE
from shipyard.exporter.children import Child, Starter
from shipyard.files.locks import OwnedWorkdir
from shipyard.files.storage import DIRECTORY_ENTRY_BYTES, guarded

log = logging.getLogger(__name__)

OFF = "none"
ENV_VAR = "SHIPYARD_SERVING_RUNTIME"  # the default for every command and component
CACHE_ENV_VAR = "SHIPYARD_CACHE_DIR"
OLDEST_RUNTIME = (2, 12)  # the oldest tensorflow-cpu with wheels for the Pythons we support
_VERSION = re.compile(r"(\d+)\.(\d+)(\.\d+)?")
_READY = "shipyard-runtime.json"  # written last: an environment without it is unfinished
_CHECK_SCRIPT = Path(__file__).with_name("runtime_check.py")
CREATE_TIMEOUT_S = 1800.0
CHECK_TIMEOUT_S = 900.0
WORKDIR_PREFIX = "shipyard-runtime-"


class RuntimeUnavailable(ShipyardError):
    """The serving runtime's environment could not be created (exit 1)."""


@dataclass(frozen=True)
class RuntimeChoice:
    """Which serving runtime to check on. version None: the check is off."""

    version: str | None
    explicit: bool  # asked for by --serving-runtime or SHIPYARD_SERVING_RUNTIME

    @property
    def pip_spec(self) -> str:
        """"2.19" -> any 2.19.x (ops only change between minor releases); "2.19.0" -> exact."""
        assert self.version is not None
        exact = self.version.count(".") == 2
        return f"=={self.version}" if exact else f"=={self.version}.*"


def choose_runtime(value: str | None) -> RuntimeChoice:
    """--serving-runtime's value (None when not given) -> the runtime to check on.

    Not given: SHIPYARD_SERVING_RUNTIME if set, else the TensorFlow of the image the manifests
    render (TF_SERVING_IMAGE). "none" turns the check off.
    """
    if value is None:
        value = os.environ.get(ENV_VAR) or None
    if value is None:
        if DEFAULT_SERVING_RUNTIME is None:  # an untagged image: nothing to check against
            return RuntimeChoice(None, explicit=False)
        return RuntimeChoice(DEFAULT_SERVING_RUNTIME, explicit=False)
    value = value.strip()
    if value.lower() == OFF:
        return RuntimeChoice(None, explicit=True)
    match = _VERSION.fullmatch(value)
    if not match or (int(match[1]), int(match[2])) < OLDEST_RUNTIME:
        oldest = ".".join(map(str, OLDEST_RUNTIME))
        raise UsageError(
            f"serving_runtime: {value!r} is not a TensorFlow release this check can run; give "
            f"the TensorFlow version of your TF Serving image as MAJOR.MINOR, {oldest} or newer "
            f"(e.g. {DEFAULT_SERVING_RUNTIME} for {TF_SERVING_IMAGE}), or 'none' to skip the "
            "check.", param="serving_runtime")
    return RuntimeChoice(value, explicit=True)


# ---- the environment -------------------------------------------------------------------------

def cache_root() -> Path:
    """$SHIPYARD_CACHE_DIR, else $XDG_CACHE_HOME/shipyard, else ~/.cache/shipyard."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shipyard"


def environment_dir(version: str) -> Path:
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return cache_root() / "serving-runtimes" / f"tensorflow-cpu-{version}-{python}"


def ensure_environment(version: str, pip_spec: str) -> Path:
    """The Python of the runtime's environment, created on first use; returns its path.

    Concurrent exports wait for one another (a file lock); an environment whose creation was
    interrupted has no ready file and is made again from scratch.
    """
    from filelock import FileLock

    env_dir = environment_dir(version)
    python = env_dir / "bin" / "python"
    if (env_dir / _READY).exists():
        return python
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(env_dir) + ".lock", timeout=CREATE_TIMEOUT_S):
        if (env_dir / _READY).exists():
            return python
        shutil.rmtree(env_dir, ignore_errors=True)
        log.info("creating the serving runtime's environment (TensorFlow %s) at %s; first use "
                 "only", version, env_dir)
        uv = _find_uv()
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        _run([uv, "venv", "--quiet", "--python", base_python, str(env_dir)], version)
        # --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
        # compile TensorFlow's sources again in every check (about 2.5x its import time).
        _run([uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python),
              f"tensorflow-cpu{pip_spec}"], version)
        # Only its protos (PredictionLog, to read the warmup file): its own requirement on
        # `tensorflow` would pull the GPU build beside tensorflow-cpu.
        _run([uv, "pip", "install", "--quiet", "--no-deps", "--python", str(python),
              f"tensorflow-serving-api{pip_spec}"], version)
        (env_dir / _READY).write_text(json.dumps({"runtime": version, "spec": pip_spec}))
    return python


def _find_uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path.home() / ".local" / "bin"))
    if found:
        return found
    try:
        from uv import find_uv_bin  # the `uv` package on PyPI ships the binary

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise RuntimeUnavailable(
            "uv is needed to create the serving runtime's environment and was not found on PATH "
            "or in ~/.local/bin; install it (`pip install uv`) or pass --serving-runtime none."
        ) from None


def _run(command: list[str], version: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeUnavailable(
            f"creating the TensorFlow {version} runtime failed: {err}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise RuntimeUnavailable(
            f"creating the TensorFlow {version} runtime failed ({Path(command[0]).name} "
            f"{command[1]} {command[-1]}, exit {done.returncode}):\n{tail}")


# ---- the check process -----------------------------------------------------------------------

@dataclass
class RuntimeOutcome:
    """What the check found: `record` goes into shipyard.json under verification.runtimes."""

    version: str
    record: dict[str, Any]
    outputs: Path | None = None  # npz of every warmup record's outputs, keyed as expected.npz


class RuntimeCheck:
    """One started check on one serving runtime; `run` it once, then `close` it.

    Started at the beginning of an export: a thread creates the environment if needed, then
    starts the child, which imports TensorFlow and waits for its job on stdin.
    """

    def __init__(self, choice: RuntimeChoice, python: Path | None = None,
                 start: Starter | None = None):
        """`python`: the interpreter to check with, instead of the runtime's environment
        (this environment's own, for a fresh CPU-only load with the project's TensorFlow).
        `start`: how to start that child in this environment (exporter/children.py; a
        process that checks many versions forks it from a server that imported TensorFlow)."""
        assert choice.version is not None
        self.choice = choice
        self._python = python
        self._starter = start
        # Owned through a lock while this process lives, so the next check's start removes
        # the work directories of killed runs (see locks.OwnedWorkdir).
        temporary = Path(tempfile.gettempdir())
        with guarded(f"create the serving-runtime check's work directory in {temporary}",
                     temporary, needed=DIRECTORY_ENTRY_BYTES, flag="TMPDIR",
                     after="Nothing was written."):
            self._owned = OwnedWorkdir(WORKDIR_PREFIX)
        self.workdir = self._owned.path
        self.log_path = self.workdir / "runtime.log"
        self._process: Child | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._ready = threading.Thread(target=self._start, name="shipyard-runtime", daemon=True)
        self._ready.start()

    def _start(self) -> None:
        try:
            if self._starter is not None:
                self._process = self._starter("shipyard.exporter.runtime_check",
                                              [str(self.workdir)], self.log_path)
                return
            python = self._python or ensure_environment(self.choice.version,
                                                        self.choice.pip_spec)
            if self._closed:
                return
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONNOUSERSITE="1")
            env.pop("PYTHONPATH", None)  # the runtime must not see the exporting environment
            with open(self.log_path, "wb") as log_file:
                self._process = subprocess.Popen(
                    [str(python), str(_CHECK_SCRIPT), str(self.workdir)],
                    stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        except RuntimeUnavailable as err:  # reported by run(), where the caller can act on it
            self._failure = err
        except Exception as err:  # noqa: BLE001 (a cache directory we cannot write, ...)
            self._failure = RuntimeUnavailable(f"{type(err).__name__}: {err}")

    def run(self, saved_model_dir: Path, plan: list[dict[str, Any]],
            timeout: float = CHECK_TIMEOUT_S) -> RuntimeOutcome:
        """Loads the version and replays its warmup requests; see `record_for`."""
        self._ready.join()
        if self._failure is not None or self._process is None:
            return self._unavailable()
        result_path = self.workdir / "result.json"
        job = {"saved_model_dir": str(saved_model_dir), "plan": plan,
               "outputs": str(self.workdir / "outputs.npz"), "result": str(result_path)}
        assert self._process.stdin is not None
        try:
            self._process.stdin.write((json.dumps(job) + "\n").encode())
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # it died early; reported below with its log
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise VerificationError(self._headline() + f"the check did not finish within "
                                    f"{timeout:.0f} s. Its log ends:\n{self.log_tail()}") from None
        if not result_path.exists():
            raise VerificationError(self._headline() + f"the check process exited with code "
                                    f"{code} and no result. Its log ends:\n{self.log_tail()}")
        result = json.loads(result_path.read_text())
        if not result["ok"]:
            raise VerificationError(self._headline() + describe_failure(
                result, self.choice.version))
        record = {"status": "passed", "tensorflow": result["tensorflow"],
                  "loader": "tf.compat.v1.saved_model.loader.load, tags {serve}",
                  "load_seconds": round(result["load_seconds"], 3),
                  "warmup_records": result["records"], "signatures": result["signatures"]}
        return RuntimeOutcome(self.choice.version, record, Path(job["outputs"]))

    def _unavailable(self) -> RuntimeOutcome:
        failure = self._failure
        reason = str(failure) if failure else "the check process did not start"
        if self.choice.explicit:
            raise RuntimeUnavailable(
                f"the serving-runtime check on TensorFlow {self.choice.version} cannot run: "
                f"{reason}\nFix the cause (the first run needs the package index), or pass "
                "--serving-runtime none to publish without this check.") from None
        log.warning("warning: skipped the serving-runtime check on TensorFlow %s: %s",
                    self.choice.version, reason)
        return RuntimeOutcome(self.choice.version, {"status": "skipped", "reason": reason})

    def _headline(self) -> str:
        return (f"the version does not serve on TF Serving's runtime, TensorFlow "
                f"{self.choice.version} (the TensorFlow of {TF_SERVING_IMAGE} unless "
                "--serving-runtime says otherwise); nothing was published:\n  ")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self._closed = True
        self._ready.join(timeout=0 if self._process is None else None)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._owned.remove()


class NoRuntimeCheck:
    """The check turned off (--serving-runtime none): nothing to start or record."""

    def close(self) -> None:
        pass


def start_runtime_check(choice: RuntimeChoice) -> RuntimeCheck | NoRuntimeCheck:
    return RuntimeCheck(choice) if choice.version is not None else NoRuntimeCheck()


_MISSING_OP = re.compile(r"Op type not registered '([^']+)'")
_MISSING_ATTR = re.compile(r"NodeDef mentions attr '([^']+)' not in Op<name=([^;>]+)")
_MISSING_DTYPE = re.compile(r"(?:Unknown|unsupported|invalid)[^.]*?(?:data ?type|DataType)[^.]*",
                            re.IGNORECASE)


def describe_failure(result: dict[str, Any], runtime: str) -> str:
    """The check's failure, naming the op or attr, the runtime and the fix. Pure."""
    error = result.get("error", "")
    newer = ("Export with a TensorFlow no newer than "
             f"{runtime}, or serve with a TF Serving image whose TensorFlow has it (raise the "
             "image in the rollout policy's serving.image and pass its version as "
             "--serving-runtime).")
    op = _MISSING_OP.search(error)
    if op:
        return (f"op {op[1]!r} is not registered in TensorFlow {runtime} (TF Serving's loader "
                f"fails with \"Op type not registered '{op[1]}'\"). " + newer)
    attr = _MISSING_ATTR.search(error)
    if attr:
        return (f"attr {attr[1]!r} of op {attr[2]!r} does not exist in TensorFlow {runtime} "
                "(TF Serving's loader fails with \"NodeDef mentions attr "
                f"'{attr[1]}' not in Op\"). " + newer)
    stage = result.get("stage", "load")
    where = ("loading it with the session loader (tags {serve})" if stage == "load"
             else f"answering warmup request {result.get('record')} through signature "
                  f"{result.get('signature')!r}")
    dtype = _MISSING_DTYPE.search(error)
    hint = (" A dtype the runtime lacks? " + newer) if dtype else (
        " If the export loads with the project's TensorFlow, the difference is the runtime's "
        "version: " + newer)
    return f"{where} failed: {error[:600]}.{hint}"


def compare_runtime_outputs(outcome: RuntimeOutcome, expected_path: Path, atol: float,
                            rtol: float) -> dict[str, float]:
    """The runtime's answers to the warmup requests against the original model's outputs
    (the warmup inputs are the verifier's inputs); {signature: max abs error}."""
    import numpy as np

    from shipyard.exporter.verifier import KEY_SEPARATOR, compare

    got = np.load(outcome.outputs)
    expected = np.load(expected_path, allow_pickle=True)  # written by this process
    parity: dict[str, float] = {}
    problems = []
    for key in sorted(got.files):
        signature, batch, output = key.split(KEY_SEPARATOR, 2)  # batch: e.g. "4", "8-real"
        if key not in expected.files:
            problems.append(f"signature {signature!r} answers output {output!r}, which the "
                            "original model does not have")
            continue
        error, problem = compare(got[key], expected[key], atol, rtol)
        parity[signature] = max(parity.get(signature, 0.0), error)
        if problem:
            problems.append(f"signature {signature!r} output {output!r} (batch {batch}): "
                            f"{problem}")
    if problems:
        listed = "\n  - ".join(problems)
        raise VerificationError(
            f"the version answers differently on TF Serving's runtime, TensorFlow "
            f"{outcome.version}, than the original model; nothing was published:\n  - {listed}\n"
            "Export with the TensorFlow of the serving image, or raise the image.")
    return parity


def this_environment_check(start: Starter | None = None) -> RuntimeCheck:
    """The same check in this environment (the project's TensorFlow), in a fresh CPU-only
    process: a load that shares nothing with the calling process."""
    from importlib.metadata import version

    return RuntimeCheck(RuntimeChoice(version("tensorflow"), explicit=True),
                        python=Path(sys.executable), start=start)
