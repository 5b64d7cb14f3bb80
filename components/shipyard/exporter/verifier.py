"""Verification of a written SavedModel in a fresh, CPU-only process.

Why a separate process: it proves the SavedModel stands alone (no Python objects, custom
classes or GPU state of the exporting process leak in), and CUDA_VISIBLE_DEVICES="" proves that
a model exported on a GPU worker loads and answers on plain CPU TF Serving.

Why start it early: importing TensorFlow costs seconds (about 6 s on 2 cores; 15 s without
its bytecode). The parent starts the verifier before it imports TensorFlow itself, so that
cost overlaps the export instead of following it. The child imports TensorFlow (never
Keras: a SavedModel must not need it), then waits on stdin for exactly one job (a JSON line)
and writes its result as JSON to the file the job names.

The parent side of this module imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.exporter.children import (
    ForkedStarter,
    Starter,
    default_starter,
    fresh_process,
    import_tensorflow_without_keras,
)
from shipyard.exporter.reference_process import ReferenceProcess
from shipyard.files.locks import OwnedWorkdir
from shipyard.files.storage import DIRECTORY_ENTRY_BYTES, guarded

log = logging.getLogger(__name__)

KEY_SEPARATOR = "|"
WORKDIR_PREFIX = "shipyard-verify-"
DEFAULT_TIMEOUT_S = 900.0


def plain_array(array: np.ndarray) -> np.ndarray:
    """An array that survives np.savez/np.load without pickling and compares by value.

    TensorFlow hands out strings as object arrays (pickled by savez, hashed by address) and
    bfloat16 as an ml_dtypes type numpy cannot do arithmetic on; bytes and float32 can.
    """
    array = np.asarray(array)
    if array.dtype.kind == "O":
        return array.astype(bytes)
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def array_digest(array: np.ndarray) -> str:
    """Digest of a variable's value: dtype, shape and bytes."""
    array = np.ascontiguousarray(plain_array(array))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)  # the buffer itself: tobytes() would copy a whole variable
    return digest.hexdigest()


class VerifierProcess:
    """A started verifier child; give it one job (`start`, then `finish` once the expected
    outputs exist; or `run`, both at once), or `close` it.

    It comes with the independent reference's child (`reference`, reference_process.py),
    started at the same moment so that both imports overlap the export: the export is
    verified against that process's outputs. `start` lets the verifier load the export and
    call it while the reference still computes; `finish` gives it the reference's outputs to
    compare with.
    """

    def __init__(self, *, with_reference: bool = True, start: Starter = fresh_process) -> None:
        # Owned through a lock while this process lives: the next verifier's start removes
        # the work directories of killed runs (see locks.OwnedWorkdir).
        temporary = Path(tempfile.gettempdir())
        with guarded(f"create the verifier's work directory in {temporary}", temporary,
                     needed=DIRECTORY_ENTRY_BYTES, flag="TMPDIR", after="Nothing was written."):
            self._owned = OwnedWorkdir(WORKDIR_PREFIX)
            self.workdir = self._owned.path
            self.log_path = self.workdir / "verifier.log"
            self.start_child = start
            self._process = start("shipyard.exporter.verifier", [str(self.workdir)],
                                  self.log_path)
        self.reference = ReferenceProcess(self.workdir, start) if with_reference else None
        self._result_path = self.workdir / "result.json"

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self, job: dict[str, Any]) -> None:
        """Sends `job` (without `expected`): the child loads the export and calls it."""
        self._send(dict(job, result=str(self._result_path)), close=False)

    def finish(self, expected: Path | str, timeout: float = DEFAULT_TIMEOUT_S
               ) -> dict[str, Any]:
        """Names the expected outputs, waits for the child, returns its result document."""
        self._send({"expected": str(expected)}, close=True)
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return {"ok": False,
                    "failures": [f"the verifier did not finish within {timeout:.0f} s"],
                    "log": self.log_tail()}
        if not self._result_path.exists():
            return {"ok": False, "failures": [f"the verifier exited with code {code} and no "
                                              "result (crashed or killed)"],
                    "log": self.log_tail()}
        return json.loads(self._result_path.read_text())

    def run(self, job: dict[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """`start` and `finish` at once: `job` names its `expected` outputs."""
        job = dict(job)
        expected = job.pop("expected")
        self.start(job)
        return self.finish(expected, timeout)

    def abandon(self) -> None:
        """Ends the verifier child without a result (its export was discarded); the
        reference child goes on."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _send(self, document: dict[str, Any], *, close: bool) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write((json.dumps(document) + "\n").encode())
            self._process.stdin.flush()
            if close:
                self._process.stdin.close()
        except BrokenPipeError:
            pass  # the child died early; reported by finish with its log

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._owned.remove()


def start_verifier() -> VerifierProcess:
    """A verifier (and its reference) started as this process starts children by default
    (children.default_starter)."""
    return VerifierProcess(start=default_starter())


class PrefetchingLauncher:
    """Hands out a verifier that was started earlier and starts the next one at once.

    For processes that export many models in a row (a test session, a long-lived worker): each
    export then finds a verifier that has already imported TensorFlow. With `forked=True`, the
    children are forked from a server that imported TensorFlow once (children.ForkedStarter),
    instead of each importing it again.
    """

    def __init__(self, *, forked: bool = False) -> None:
        self._forked = ForkedStarter() if forked else None
        self._start: Starter = self._forked or fresh_process
        self._spare: VerifierProcess | None = VerifierProcess(start=self._start)

    @property
    def start(self) -> Starter:
        """How this launcher starts children: for other checks of the same process."""
        return self._start

    def __call__(self) -> VerifierProcess:
        verifier = self._spare or VerifierProcess(start=self._start)
        self._spare = VerifierProcess(start=self._start)
        return verifier

    def close(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None


# ---------------------------------------------------------------------------------------------
# The child side.


# The verifier's work is needed last (after the export is written and while the reference
# computes), so on a machine with fewer cores than busy processes (the parent exporting, the
# reference child loading, this one importing) it yields the CPU to them: measured on 2 cores
# (bench/export.py, 130 MiB, medians of 2), the export's wall time went from 1.05x to 0.98x
# the raw baseline.
VERIFIER_NICENESS = 10


def _main() -> int:
    with contextlib.suppress(OSError):
        os.nice(VERIFIER_NICENESS)
    tf = import_tensorflow_without_keras()  # the cost this process exists to pay early

    line = sys.stdin.readline()
    if not line.strip():
        # The parent closed stdin without a job: it gave up or was killed. Nobody else will
        # remove the working folder then.
        shutil.rmtree(sys.argv[1], ignore_errors=True)
        return 0
    job = json.loads(line)
    result = _verify(tf, job, _expected_from_stdin)
    if result is not None:  # None: the parent abandoned this export (no expected outputs)
        Path(job["result"]).write_text(json.dumps(result))
    return 0


def _expected_from_stdin() -> str | None:
    """The expected outputs' path, sent once the reference has them; None if the parent
    closed stdin instead."""
    line = sys.stdin.readline()
    return json.loads(line)["expected"] if line.strip() else None


def _verify(tf: Any, job: dict[str, Any], wait_for_expected: Any) -> dict[str, Any] | None:
    failures: list[str] = []
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    if any(d != "CPU" for d in devices):
        failures.append(f"an accelerator is visible to the verifier ({devices}); it must run "
                        "on CPU only")
    started = time.monotonic()
    session_loader = job.get("loader") == "session"
    try:
        if session_loader:
            loaded = SessionModel(tf, job["saved_model_dir"])
        else:
            loaded = tf.saved_model.load(job["saved_model_dir"])
    except Exception as err:  # any load failure is a verification failure
        return {"ok": False, "failures": [f"the SavedModel does not load: "
                                          f"{type(err).__name__}: {err}"], "devices": devices}
    load_seconds = time.monotonic() - started

    if job["collections"]:
        objects = tf.saved_model.load(job["saved_model_dir"]) if session_loader else loaded
        failures += _check_collections(objects, job["collections"])
    outputs, call_failures = _call_endpoints(tf, loaded, job)  # before the expected exist
    expected = job.get("expected") or wait_for_expected()
    if expected is None:
        return None
    parity, parity_failures = _compare_outputs(outputs, expected, job)
    failures += call_failures + parity_failures
    return {"ok": not failures, "failures": failures, "parity": parity, "devices": devices,
            "load_seconds": load_seconds,
            "loader": SESSION_LOADER if session_loader else "tf.saved_model.load"}


SESSION_LOADER = "tf.compat.v1.saved_model.loader.load (TF Serving's session loader)"


class SessionModel:
    """A SavedModel loaded as TF Serving loads it: TF1's session loader, tags {serve}, in its
    own Graph and Session. The loader restores the variables and runs the SavedModel's init
    op (a TF1 main_op or legacy_init_op, TF2's __saved_model_init_op): a version whose
    tables or other resources are not initialized that way fails here as it would in TF
    Serving. `signatures` offers each SignatureDef as a callable by input name, fed and
    fetched by tensor name, as TF Serving's Predict does."""

    def __init__(self, tf: Any, directory: str) -> None:
        self._tf = tf
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"],
                                                              directory)
        self.signatures = {name: _SessionSignature(self._session, signature)
                           for name, signature in meta_graph.signature_def.items()
                           if not name.startswith("__")}


class _SessionSignature:
    def __init__(self, session: Any, signature: Any) -> None:
        self._session, self._signature = session, signature
        self.input_dtypes = {name: info.dtype for name, info in signature.inputs.items()}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - set(self._signature.inputs))
        if unknown:
            raise KeyError(f"inputs {unknown} are not inputs of the signature "
                           f"({sorted(self._signature.inputs)})")
        feeds = {self._signature.inputs[name].name: value for name, value in inputs.items()}
        fetches = {name: info.name for name, info in self._signature.outputs.items()}
        return self._session.run(fetches, feeds)


def _check_collections(loaded: Any, expected: dict[str, list[str]]) -> list[str]:
    failures = []
    for name, digests in expected.items():
        restored = getattr(loaded, name, None)
        if restored is None:
            failures.append(f"variable collection {name!r} is missing from the SavedModel")
            continue
        restored = list(restored)
        if len(restored) != len(digests):
            failures.append(f"variable collection {name!r}: {len(restored)} variables restored, "
                            f"{len(digests)} exported")
            continue
        changed = sum(array_digest(v.numpy()) != d for v, d in zip(restored, digests))
        if changed:
            failures.append(f"variable collection {name!r}: {changed} of {len(digests)} "
                            "variables restored with different values")
    return failures


def _call_endpoints(tf: Any, loaded: Any, job: dict[str, Any]
                    ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Every call of the plan, in the exporter's order (see reference.py): {key: outputs}."""
    # Our own file, written by the exporting process: serialized examples travel pickled.
    inputs = np.load(job["inputs"], allow_pickle=True)
    outputs: dict[str, dict[str, np.ndarray]] = {}
    failures: list[str] = []
    for step in job["plan"]:
        endpoint, batch = step["signature"], step["batch_size"]
        signature = loaded.signatures.get(endpoint)
        if signature is None:
            failures.append(f"endpoint {endpoint!r} is not a signature of the SavedModel")
            continue
        prefix = step["key"]  # the reference's key (see reference.Reference.key)
        try:
            feed = _feed(tf, signature, {k[len(prefix):]: inputs[k] for k in inputs.files
                                         if k.startswith(prefix)})
            outputs[prefix] = {k: plain_array(np.asarray(v)) for k, v in signature(**feed).items()}
        except Exception as err:  # the call itself failing is the finding
            failures.append(f"endpoint {endpoint!r} (batch {batch}) fails when called: "
                            f"{type(err).__name__}: {str(err)[:300]}")
    return outputs, failures


def _feed(tf: Any, signature: Any, named: dict[str, np.ndarray]) -> dict[str, Any]:
    """The arrays as the signature's dtypes: eager tensors for a restored signature, numpy
    arrays for a session's (the session converts them as TF Serving's Predict does)."""
    if isinstance(signature, _SessionSignature):
        return {name: np.asarray(value, dtype=tf.dtypes.as_dtype(
            signature.input_dtypes[name]).as_numpy_dtype) if name in signature.input_dtypes
            else value for name, value in named.items()}
    specs = signature.structured_input_signature[1]
    return {name: tf.constant(value, dtype=specs[name].dtype) for name, value in named.items()}


def _compare_outputs(outputs: dict[str, dict[str, np.ndarray]], expected_path: str,
                     job: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    expected = np.load(expected_path, allow_pickle=True)
    atol, rtol = job["tolerance"]["atol"], job["tolerance"]["rtol"]
    parity: dict[str, float] = {}
    failures: list[str] = []
    # The plan ends with serving_default, whose reference is the default endpoint's output,
    # so a wrong default is caught by value.
    for step in job["plan"]:
        endpoint, batch, prefix = step["signature"], step["batch_size"], step["key"]
        if prefix not in outputs:
            continue  # not a signature, or the call failed: reported already
        got = outputs[prefix]
        wanted = {k[len(prefix):]: expected[k] for k in expected.files if k.startswith(prefix)}
        if sorted(got) != sorted(wanted):
            failures.append(f"endpoint {endpoint!r}: outputs {sorted(got)} differ from the "
                            f"original model's {sorted(wanted)}")
            continue
        for name in sorted(wanted):
            error, problem = compare(got[name], wanted[name], atol, rtol)
            parity[endpoint] = max(parity.get(endpoint, 0.0), error)
            if problem:
                failures.append(f"endpoint {endpoint!r} output {name!r} (batch {batch}): {problem}")
    return parity, failures


def compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float
            ) -> tuple[float, str | None]:
    """(max abs error, problem or None). Floats within tolerance; everything else exactly."""
    if got.shape != want.shape:
        return float("inf"), f"shape {got.shape} != original {want.shape}"
    if got.dtype.kind != "f" or want.dtype.kind != "f":
        # Strings, booleans and integers (class ids, counts) must match exactly: a float
        # tolerance would let 1_000_000 pass for 1_000_009.
        if got.dtype.kind != want.dtype.kind:
            return float("inf"), f"dtype {got.dtype} != original {want.dtype}"
        same = bool(np.array_equal(got, want))
        return (0.0 if same else float("inf")), None if same else "values differ"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    # Non-finite values match only the same value on the other side (NaN with NaN, +inf with
    # +inf): whether the original may produce them at all is decided before (reference.py).
    same_special = (np.isnan(got64) & np.isnan(want64)) | (np.isinf(got64) & (got64 == want64))
    with np.errstate(invalid="ignore"):
        difference = np.where(same_special, 0.0, np.abs(got64 - want64))
    if not np.all(np.isfinite(difference)):
        return float("inf"), ("non-finite values (NaN or Inf) where the original has other "
                               "values, or the reverse")
    error = float(np.max(difference)) if difference.size else 0.0
    if not np.allclose(got64, want64, atol=atol, rtol=rtol, equal_nan=True):
        return error, (f"max abs error {error:.3g} exceeds the tolerance (atol={atol:g}, "
                       f"rtol={rtol:g})")
    return error, None


if __name__ == "__main__":
    sys.exit(_main())
