"""The serving-runtime check's child: runs with the TF Serving image's TensorFlow.

Started by exporter/runtime.py with the Python of the runtime's own environment
(`tensorflow-cpu==<runtime>`), by file path, so it imports nothing from shipyard or from the
exporting environment: only the standard library, numpy, TensorFlow and TF Serving's protos.

It imports TensorFlow at once (the cost it exists to pay early), waits for one job on stdin
(a JSON line), then does what TF Serving does with a new version:
1. loads it with the TF1 session loader, tags {serve}, in its own Graph and Session
   (TF Serving's SavedModelBundle loader: LoadSavedModel with kSavedModelTagServe);
2. replays `assets.extra/tf_serving_warmup_requests` through the signatures the records name
   (TF Serving's RunSavedModelWarmup: predict_log, classify_log and regress_log records).
The outputs of each record go to an npz file for the parent to compare with the original
model's; the result (or where and how it failed) goes to a JSON file.
"""

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"


def main() -> int:
    # Imported while the parent exports, without the import of all of Keras that
    # TensorFlow's __init__ makes eagerly (and tolerates failing): TF Serving loads versions
    # with no Keras either. As shipyard.exporter.children.import_tensorflow_without_keras,
    # repeated because this file imports nothing from shipyard.
    sys.modules["keras.src.optimizers"] = None
    import tensorflow as tf  # noqa: F401
    del sys.modules["keras.src.optimizers"]

    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent gave up; it removes the working folder
    job = json.loads(line)
    try:
        result = check(job)
    except Exception as err:  # noqa: BLE001 (anything unexpected is reported, not hidden)
        result = {"ok": False, "stage": "check", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def check(job: dict) -> dict:
    import tensorflow as tf

    path = job["saved_model_dir"]
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    started = time.monotonic()
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    except Exception as err:  # noqa: BLE001 (the loader's own message is the finding)
        return {"ok": False, "stage": "load", "error": f"{type(err).__name__}: {err}",
                "tensorflow": tf.__version__}
    load_seconds = time.monotonic() - started
    signatures = dict(meta_graph.signature_def)

    outputs: dict = {}
    counts: dict = {}
    records = read_warmup(Path(path) / WARMUP_PATH)
    plan = job["plan"]
    for index, (record, step) in enumerate(zip(records, plan)):
        name = record_signature(record)
        try:
            answered = answer(tf, session, signatures, record)
        except Exception as err:  # noqa: BLE001
            return {"ok": False, "stage": "warmup", "record": index, "signature": name,
                    "error": f"{type(err).__name__}: {err}", "tensorflow": tf.__version__}
        prefix = step["key"]  # the key of the original model's outputs for this call
        outputs.update({prefix + key: plain(value) for key, value in answered.items()})
        counts[name] = counts.get(name, 0) + 1
    np.savez(job["outputs"], **outputs)
    session.close()
    return {"ok": True, "tensorflow": tf.__version__, "load_seconds": load_seconds,
            "records": len(records), "signatures": counts}


def read_warmup(path: Path) -> list:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    if not path.exists():
        return []
    logs = []
    for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw)
        logs.append(log)
    return logs[:1000]  # TF Serving reads at most 1000 warmup records


def record_signature(log) -> str:
    kind = log.WhichOneof("log_type")
    request = getattr(log, kind).request
    return request.model_spec.signature_name or "serving_default"


def answer(tf, session, signatures: dict, log) -> dict:
    """One warmup record through its signature, fed as TF Serving feeds it."""
    kind = log.WhichOneof("log_type")
    request = getattr(log, kind).request
    name = record_signature(log)
    if name not in signatures:
        raise KeyError(f"signature {name!r} is not in the SavedModel ({sorted(signatures)})")
    signature = signatures[name]
    if kind == "predict_log":
        feeds = {signature.inputs[alias].name: tf.make_ndarray(tensor)
                 for alias, tensor in request.inputs.items()}
    elif kind in ("classify_log", "regress_log"):
        # TF Serving serializes input.example_list and feeds it to the one input, `inputs`.
        examples = [e.SerializeToString() for e in request.input.example_list.examples]
        feeds = {signature.inputs["inputs"].name: np.array(examples, dtype=object)}
    else:
        raise ValueError(f"warmup record of kind {kind!r} is not replayed by this check")
    fetches = {alias: info.name for alias, info in signature.outputs.items()}
    return session.run(fetches, feeds)


def plain(value) -> np.ndarray:
    """npz without pickles: strings as bytes, the rest as numpy has them."""
    value = np.asarray(value)
    if value.dtype.kind == "O":
        return value.astype(bytes)
    return value.astype(np.float32) if value.dtype.name == "bfloat16" else value


if __name__ == "__main__":
    sys.exit(main())
