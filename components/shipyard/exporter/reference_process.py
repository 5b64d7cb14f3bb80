"""The independent reference: the source model as its own library loads it, in a process of
its own, answering the inputs the verifier will send the export.

Why: the exporting process loads a `.keras` file its own, optimized way (keras_loading.py:
weights mapped from the file, variables filled in place). If the parity reference came from
that same load, a fault of the load would be compared with itself and pass: a layer that read
its weight while Keras rebuilt it once published a wrong model as verified. Here the source
is loaded by `keras.saving.load_model`, unpatched (a SavedModel source: by
`tf.saved_model.load`), in a process that runs none of shipyard's loading code, so the
outputs the export is held to share nothing with the export's load but the file itself.

How it overlaps the export: the process is started with the verifier (before the parent
imports TensorFlow), is told which model to load as soon as the export starts (`load`), and
loads it while the parent loads and writes its own copy. Once the parent has written the
inputs, `compute` asks it for the outputs; it answers each job with one JSON line on a pipe
of its own (its stdout and stderr go to its log). Closing its stdin ends it, which frees its
copy of the model before the verifier loads the export.

Random state: an unseeded Dropout draws a new seed state in every process, and Keras does not
restore it from the file, so an endpoint with `training: true` could never compare. The
parent sends the seed states its model had when the SavedModel was written (random-number
state, not weights); this process sets its own to them, in variable order, and then replays
the verifier's calls in the verifier's order.

The parent side of this module imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from shipyard.exporter.children import (
    PassedFd,
    Starter,
    fresh_process,
    import_tensorflow_as_fresh,
)

LOG_NAME = "reference.log"
EXPECTED_NAME = "expected.npz"
KERAS_LOADER = "keras.saving.load_model"
SAVED_MODEL_LOADER = "tf.saved_model.load"


class ReferenceFailed(Exception):
    """The reference process could not load the source or call it (message says which)."""


class ReferenceProcess:
    """A started reference child: `load` once, then `compute` one or more times, `close`."""

    def __init__(self, workdir: Path, start: Starter = fresh_process) -> None:
        self.workdir = workdir
        self.log_path = workdir / LOG_NAME
        reply_read, reply_write = os.pipe()
        try:
            self._process = start("shipyard.exporter.reference_process",
                                  [str(workdir), PassedFd(reply_write)], self.log_path)
        finally:
            os.close(reply_write)  # the child holds it: EOF here means the child is gone
        self._replies = os.fdopen(reply_read, "rb")
        self.loading: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    def load(self, model: Path, *, imports: tuple[str, ...] = (), unsafe: bool = False) -> None:
        """Starts loading `model` (a .keras file or a SavedModel directory) in the child."""
        self.loading = {"model": str(Path(model).resolve()),
                        "imports": list(dict.fromkeys([*imports, *registered_modules()])),
                        "unsafe": unsafe, "sys_path": [p for p in sys.path if p]}
        self._send(self.loading)

    def compute(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Sends one compute job (see _compute) and waits for its answer; raises
        ReferenceFailed if the child fails, dies or overruns `timeout`."""
        if self.loading is None:
            raise RuntimeError("ReferenceProcess.compute before load")
        self._send(job)
        ready, _, _ = select.select([self._replies], [], [], timeout)
        line = self._replies.readline() if ready else None
        if line is None:
            self.close()
            raise ReferenceFailed(f"Keras's own load did not answer within {timeout:.0f} s")
        if not line:
            code = self._process.wait()
            raise ReferenceFailed(f"the reference process exited with code {code} (crashed or "
                                  f"killed); its last lines:\n{self.log_tail(5)}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise ReferenceFailed(reply["error"])
        return reply

    def finish(self) -> None:
        """Lets the child exit on its own (it frees its model), without waiting for it."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        self.finish()
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._replies.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _send(self, document: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write((json.dumps(document) + "\n").encode())
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # the child died: compute reports it with its log


def registered_modules() -> list[str]:
    """The modules of the custom classes this process has registered with Keras
    (`register_keras_serializable`), which a .keras file may name: the child imports them
    too, as the exporting process did (by --import, or by whoever called the export). Keras
    is not imported for this: if it is not loaded yet, nothing is registered."""
    keras = sys.modules.get("keras")
    saving = getattr(keras, "saving", None)
    if saving is None:
        return []
    modules = (getattr(obj, "__module__", None) for obj in saving.get_custom_objects().values())
    return sorted({m for m in modules if m and m != "__main__"
                   and not m.startswith(("keras.", "tensorflow.", "tf_keras."))})


# ---------------------------------------------------------------------------------------------
# The child side: none of shipyard's loading code runs here (source.load_source_model and
# keras_loading's replacements are never called), only the library's own load and the
# endpoints' wrappers (archive.py), the same wrappers the export traces.


def _main() -> int:
    tf = import_tensorflow_as_fresh()  # with Keras: the reference is Keras's own load

    replies = os.fdopen(int(sys.argv[2]), "w")
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent gave up before exporting
    loading = json.loads(line)
    started = time.monotonic()
    try:
        loaded, loader = _load(tf, loading)
        failure = None
    except Exception as err:  # any failure of the library's own load is the finding
        loaded, loader = None, None
        failure = (f"{KERAS_LOADER if loading['model'].endswith('.keras') else SAVED_MODEL_LOADER}"
                   f" fails on {loading['model']} in a fresh process: {type(err).__name__}: "
                   f"{_first_line(err)}{_advice(err)}")
    load_seconds = time.monotonic() - started
    for job_line in sys.stdin:
        job = json.loads(job_line)
        if failure is not None:
            reply = {"ok": False, "error": failure}
        else:
            try:
                started = time.monotonic()
                _compute(loaded, job)
                reply = {"ok": True, "loader": loader, "load_seconds": load_seconds,
                         "compute_seconds": time.monotonic() - started,
                         "peak_rss_mib": _peak_rss_mib()}
            except Exception as err:  # the model failing on the inputs is the finding
                reply = {"ok": False, "error": f"{type(err).__name__}: {_first_line(err)}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def _load(tf: Any, loading: dict[str, Any]) -> tuple[Any, str]:
    import importlib

    for entry in reversed(loading["sys_path"]):  # the parent's, for --import modules
        if entry not in sys.path:
            sys.path.insert(0, entry)
    for module in loading["imports"]:
        importlib.import_module(module)
    model = Path(loading["model"])
    if model.is_dir():
        return tf.saved_model.load(str(model)), SAVED_MODEL_LOADER
    import keras

    return keras.saving.load_model(model, safe_mode=not loading["unsafe"]), KERAS_LOADER


def _compute(loaded: Any, job: dict[str, Any]) -> None:
    """job: spec (normalized), model, inputs (npz), plan [{signature, endpoint, key}],
    seed_states (list of lists, in variable order), expected (npz to write)."""
    import numpy as np

    from shipyard.core.spec import parse_spec
    from shipyard.exporter.archive import endpoint_function, structure_arguments
    from shipyard.exporter.reference import as_tensors, to_numpy
    from shipyard.exporter.source import SourceModel

    spec = parse_spec(job["spec"])
    model = Path(job["model"])
    source = SourceModel(path=model, format="saved_model" if model.is_dir() else "keras",
                         obj=loaded, sha256=None)
    _set_seed_states(loaded, job["seed_states"])
    endpoints = {e.name: e for e in spec.endpoints}
    functions = {name: endpoint_function(source, spec, name) for name in endpoints}
    inputs = np.load(job["inputs"], allow_pickle=True)  # our own file: examples are pickled
    expected: dict[str, np.ndarray] = {}
    for step in job["plan"]:
        endpoint, prefix = endpoints[step["endpoint"]], step["key"]
        named = {k[len(prefix):]: inputs[k] for k in inputs.files if k.startswith(prefix)}
        arguments = as_tensors(endpoint, structure_arguments(endpoint, named))
        try:
            outputs = functions[endpoint.name](*arguments)
        except Exception as err:
            raise RuntimeError(f"endpoint {step['signature']!r} (inputs {prefix!r}): "
                               f"{type(err).__name__}: {_first_line(err)}") from None
        expected.update({prefix + k: to_numpy(v) for k, v in outputs.items()})
    np.savez(job["expected"], **expected)


def _set_seed_states(model: Any, states: list[list[int]]) -> None:
    import numpy as np

    variables = [v for v in getattr(model, "variables", [])
                 if (getattr(v, "path", None) or v.name).endswith("seed_generator_state")]
    if len(variables) != len(states):
        return  # another layout: random endpoints will then be compared as they come out
    for variable, state in zip(variables, states):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def _advice(err: Exception) -> str:
    text = str(err)
    if "Could not locate" in text or "Unknown" in text or isinstance(err, ImportError):
        return (" (pass --import MODULE naming the module that registers the model's custom "
                "classes: a fresh process knows only what it imports)")
    return ""


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else ""


if __name__ == "__main__":
    sys.exit(_main())
