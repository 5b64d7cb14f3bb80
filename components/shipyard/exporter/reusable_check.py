"""TF Hub's own client on a version with the reusable interface, in a process of its own.

Why TF Hub's client: the interface (exporter/reusable.py) is a convention between a
SavedModel and `tensorflow_hub.KerasLayer`; only that client shows the version can be
fine-tuned. It runs on tf_keras (Keras 2), which TensorFlow selects only when
TF_USE_LEGACY_KERAS=1 is set before it is imported, while the exporting process runs Keras 3:
so the child is a fresh process, with the same Python (tensorflow-hub and tf-keras are
shipyard's dependencies), no accelerator visible, and nothing of the export's Python objects.

The child loads `hub.KerasLayer(version, trainable=True)` and reports what it finds: its
answer for training=False on the default endpoint's inputs, its trainable weights, its
regularization losses, and whether one gradient step (tf_keras SGD on the squared outputs)
changes the weights. The parent compares that with the model
(reusable.expectations) and raises VerificationError naming what differs.

The parent side of this module imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

KEY_SEPARATOR = "|"
WORKDIR_PREFIX = "shipyard-reusable-"
CHECK_TIMEOUT_S = 600.0
LEARNING_RATE = 0.1


def check_reusable(version_dir: Path, inputs: Any, expected_outputs: dict[str, np.ndarray],
                   trainable_count: int, regularization_losses: list[float], tolerance: Any,
                   timeout: float = CHECK_TIMEOUT_S) -> dict[str, Any]:
    """Checks the version with TF Hub's client; returns the record for shipyard.json.

    `inputs`: the one argument of `__call__` (an array, a dict or a list of arrays);
    `expected_outputs`: the model's outputs for it with training=False, by output name (for a
    tensor or list output, in output order); `tolerance`: the spec's (atol, rtol).
    Raises VerificationError (exit 4) naming each difference."""
    from shipyard.core.errors import VerificationError
    from shipyard.exporter.verifier import compare, plain_array
    from shipyard.files.locks import OwnedWorkdir

    atol, rtol = float(tolerance.atol), float(tolerance.rtol)
    workdir = OwnedWorkdir(WORKDIR_PREFIX)
    try:
        structure, arrays = _flatten_inputs(inputs)
        job = {"saved_model_dir": str(Path(version_dir).resolve()), "inputs": structure,
               "arrays": str(workdir.path / "inputs.npz"),
               "outputs": str(workdir.path / "outputs.npz"),
               "result": str(workdir.path / "result.json"), "learning_rate": LEARNING_RATE}
        np.savez(job["arrays"], **{key: plain_array(value) for key, value in arrays.items()})
        started = time.monotonic()
        result = _run_child(workdir.path, job, timeout)
        seconds = time.monotonic() - started
        answered = dict(np.load(job["outputs"])) if result.get("ok") else {}
    finally:
        workdir.remove()
    client = result.get("client", "tensorflow_hub.KerasLayer")
    if not result.get("ok"):
        raise VerificationError(
            f"the version's reusable interface does not load in TF Hub's client ({client}); "
            f"nothing was published: {str(result.get('error')).rstrip('.')}. Without "
            "`reusable`, the version ships with its serving signatures only")
    failures = []
    got = _by_expected_name(answered, result["output_keys"], list(expected_outputs), failures)
    max_error = 0.0
    for name, want in expected_outputs.items():
        if name not in got:
            continue
        error, problem = compare(plain_array(got[name]), plain_array(want), atol, rtol)
        max_error = max(max_error, error)
        if problem:
            failures.append(f"__call__(inputs, training=False) output {name!r} differs from the "
                            f"model's: {problem}")
    if result["trainable_weights"] != trainable_count:
        failures.append(f"KerasLayer has {result['trainable_weights']} trainable weights, the "
                        f"model {trainable_count} (the version's trainable_variables)")
    losses = result["regularization_losses"]
    if len(losses) != len(regularization_losses) or not np.allclose(
            losses, regularization_losses, atol=atol, rtol=rtol):
        failures.append(f"KerasLayer's regularization losses are {_rounded(losses)}, the "
                        f"model's weight regularization losses {_rounded(regularization_losses)}")
    changed = result["changed_weights"]
    if result["trainable_weights"] == 0:
        failures.append("the version has no trainable weights, so nothing to fine-tune: a model "
                        "without any is not reusable in TF Hub's sense; remove `reusable`")
    elif changed == 0:
        failures.append(
            f"one gradient step (tf_keras SGD, learning rate {LEARNING_RATE}) changed none of "
            f"the {result['trainable_weights']} trainable weights: their gradients are "
            f"{result['gradients']} (__call__ does not read trainable_variables?)")
    if failures:
        details = "\n".join(f"  - {f}" for f in failures)
        raise VerificationError(
            f"the version's reusable interface does not work in TF Hub's client ({client}, "
            f"hub.KerasLayer(version, trainable=True)); nothing was published:\n{details}")
    return {"client": client, "trainable_weights": result["trainable_weights"],
            "regularization_losses": losses,
            "gradient_step": f"changed {changed} of {result['trainable_weights']} trainable "
                             "weights",
            "max_abs_error": max_error, "seconds": round(seconds, 3)}


def _flatten_inputs(inputs: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The argument -> (its structure, arrays keyed 'input|<key>') for the child."""
    if isinstance(inputs, dict):
        kind, items = "dict", [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (list, tuple)):
        kind, items = "list", [(str(i), v) for i, v in enumerate(inputs)]
    else:
        kind, items = "tensor", [("0", inputs)]
    arrays = {f"input{KEY_SEPARATOR}{key}": np.asarray(value) for key, value in items}
    # The declared dtype travels apart: bfloat16 is saved as float32, strings as bytes.
    dtypes = {key: "string" if np.asarray(value).dtype.kind in "OSU" else
              np.asarray(value).dtype.name for key, value in items}
    return {"kind": kind, "keys": [key for key, _ in items], "dtypes": dtypes}, arrays


def _by_expected_name(answered: dict[str, np.ndarray], output_keys: dict[str, Any],
                      expected: list[str], failures: list[str]) -> dict[str, np.ndarray]:
    """The child's outputs under the model's output names: a dict by key, a tensor or a list
    by position."""
    keys = output_keys["keys"]
    if output_keys["kind"] == "dict":
        named = {key: answered[f"output{KEY_SEPARATOR}{key}"] for key in keys}
    elif len(keys) == len(expected):
        named = {name: answered[f"output{KEY_SEPARATOR}{key}"]
                 for name, key in zip(expected, keys)}
    else:
        failures.append(f"__call__ answers {len(keys)} outputs, the model {len(expected)} "
                        f"({expected})")
        return {}
    missing = sorted(set(expected) - set(named))
    if missing:
        failures.append(f"__call__ answers outputs {sorted(named)}, the model {expected}: "
                        f"{missing} missing")
    return named


def _rounded(values: list[float]) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def _run_child(workdir: Path, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job))
    log_path = workdir / "reusable.log"
    # tf_keras only where TensorFlow is told before its import; no accelerator, as the
    # verifier: the check must not depend on the exporting machine's devices.
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "wb") as log_file:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "shipyard.exporter.reusable_check", str(job_path)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                timeout=timeout)
            code = done.returncode
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"TF Hub's client did not answer within {timeout:.0f} s"}
    result_path = Path(job["result"])
    if result_path.exists():
        return json.loads(result_path.read_text())
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
    return {"ok": False, "error": f"the check's process exited with code {code} (crashed or "
                                  f"killed); its last lines:\n{tail}"}


# ---- the child ------------------------------------------------------------------------------

def _main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        result = _check(job)
    except Exception as err:  # noqa: BLE001 (anything unexpected is reported, not hidden)
        result = {"ok": False, "error": f"{type(err).__name__}: {_first_line(err)}",
                  "traceback": traceback.format_exc()}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def _check(job: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    client = f"tensorflow_hub.KerasLayer {hub.__version__} (tf_keras {tf_keras.__version__})"
    arrays = np.load(job["arrays"], allow_pickle=False)
    structure = job["inputs"]
    tensors = [tf.constant(arrays[f"input{KEY_SEPARATOR}{key}"],
                           dtype=tf.dtypes.as_dtype(structure["dtypes"][key]))
               for key in structure["keys"]]
    inputs = (dict(zip(structure["keys"], tensors)) if structure["kind"] == "dict"
              else tensors if structure["kind"] == "list" else tensors[0])
    try:
        layer = hub.KerasLayer(job["saved_model_dir"], trainable=True)
    except Exception as err:  # noqa: BLE001 (the client's own message is the finding)
        return {"ok": False, "client": client, "error": f"hub.KerasLayer(version, "
                f"trainable=True) fails: {type(err).__name__}: {_first_line(err)}"}
    answered = layer(inputs, training=False)
    if isinstance(answered, dict):
        output_keys = {"kind": "dict", "keys": [str(k) for k in answered]}
        outputs = {f"output{KEY_SEPARATOR}{k}": np.asarray(v) for k, v in answered.items()}
    else:
        flat = tf.nest.flatten(answered)
        output_keys = {"kind": "list", "keys": [str(i) for i in range(len(flat))]}
        outputs = {f"output{KEY_SEPARATOR}{i}": np.asarray(v) for i, v in enumerate(flat)}
    np.savez(job["outputs"], **{k: v.astype(bytes) if v.dtype.kind == "O" else v
                                for k, v in outputs.items()})
    losses = [float(loss) for loss in layer.losses]
    changed, gradients = _gradient_step(tf, tf_keras, layer, inputs, job["learning_rate"])
    return {"ok": True, "client": client, "output_keys": output_keys,
            "trainable_weights": len(layer.trainable_weights), "regularization_losses": losses,
            "changed_weights": changed, "gradients": gradients}


def _gradient_step(tf: Any, tf_keras: Any, layer: Any, inputs: Any, learning_rate: float
                   ) -> tuple[int, str]:
    """One SGD step on sum((output + 1)^2) (the + 1 keeps a zero output from giving zero
    gradients); returns how many trainable weights it changed, and what the gradients were.
    The regularization losses stay out of the loss: they alone would move a regularized
    weight that `__call__` never reads."""
    weights = layer.trainable_weights
    before = [w.numpy().copy() for w in weights]
    with tf.GradientTape() as tape:
        outputs = [t for t in tf.nest.flatten(layer(inputs, training=True))
                   if t.dtype.is_floating]
        terms = [tf.reduce_sum(tf.square(tf.cast(t, tf.float32) + 1.0)) for t in outputs]
        loss = tf.add_n(terms) if terms else tf.constant(0.0)
    gradients = tape.gradient(loss, weights) if weights else []
    pairs = [(g, w) for g, w in zip(gradients, weights) if g is not None]
    if pairs:
        tf_keras.optimizers.SGD(learning_rate=learning_rate).apply_gradients(pairs)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, weights))
    zero = sum(not np.any(tf.convert_to_tensor(g).numpy()) for g, _ in pairs)
    found = ("none: __call__ answers no float output" if not outputs else
             f"None for {len(weights) - len(pairs)} and zero for {zero} of them")
    return changed, found


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else ""


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
