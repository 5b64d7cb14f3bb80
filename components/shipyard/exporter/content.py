"""What an export's fingerprint and manifest are computed from, beside the files: the source's
architecture and random-number state, and the written SavedModel's checkpoint tensors and
signatures (read back from its files)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from shipyard.exporter.source import SourceModel
from shipyard.exporter.variable_collections import variable_path


def architecture_digest(source: SourceModel) -> str:
    """What the model computes beyond its weights: activations, constants, layer wiring.

    For a .keras file, its config.json; for a SavedModel source, its saved_model.pb (one
    source directory, one graph).
    """
    import hashlib
    import zipfile

    if source.format == "keras":
        with zipfile.ZipFile(source.path) as archive:
            return keras_config_digest(json.loads(archive.read("config.json")))
    graph = next(source.path / name for name in ("saved_model.pb", "saved_model.pbtxt")
                 if (source.path / name).is_file())
    return hashlib.sha256(graph.read_bytes()).hexdigest()


def keras_config_digest(config: Any) -> str:
    """A digest of a Keras config that equal models share across processes: the
    `shared_object_id`s Keras writes are Python object ids, so they are renumbered in order
    of first appearance (which objects are shared is kept, where they lived is not)."""
    import hashlib

    renumbered: dict[Any, int] = {}

    def canonical(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: (renumbered.setdefault(value, len(renumbered))
                          if key == "shared_object_id" else canonical(value))
                    for key, value in sorted(node.items())}
        if isinstance(node, list):
            return [canonical(item) for item in node]
        return node

    return hashlib.sha256(json.dumps(canonical(config), sort_keys=True).encode()).hexdigest()


def rng_states(source: SourceModel) -> list[np.ndarray]:
    """The Keras SeedGenerator states (random-number state, not learned weights), in variable
    order. An unseeded Dropout starts from a random state in every process, and Keras does
    not restore it from a .keras file: hashing it would give each export of one trained model
    a new fingerprint, and a fresh load would draw other dropout masks. Call it right after
    the write, before anything advances the states."""
    if source.format != "keras":
        return []
    return [np.asarray(v) for v in getattr(source.obj, "variables", [])
            if variable_path(v).endswith("seed_generator_state")]


def rng_state_digests(states: list[np.ndarray]) -> set[str]:
    """Digests of `rng_states`, left out of the fingerprint."""
    from shipyard.exporter.verifier import array_digest

    return {array_digest(state) for state in states}


def checkpoint_digests(saved_model_dir: Path, leave_out: set[str] = frozenset(),
                       stop: threading.Event | None = None) -> list[str]:
    """One digest per tensor in the SavedModel's checkpoint (object graph excluded), less
    those in `leave_out`; numeric tensors are read a few MiB at a time (checkpoint_bundle).
    `stop`, once set, ends it with HashingStopped."""
    from shipyard.exporter.checkpoint_bundle import checkpoint_digests as bundle_digests
    from shipyard.exporter.verifier import array_digest

    prefix = saved_model_dir / "variables" / "variables"
    reader = tf.train.load_checkpoint(str(prefix))

    def whole_tensor(key: str) -> np.ndarray:
        value = reader.get_tensor(key)
        return np.asarray([value]) if isinstance(value, bytes) else value

    # The object graph is layout, not content: it varies between exports of one model.
    keys = [key for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    digests = bundle_digests(prefix, keys, whole_tensor, array_digest, stop=stop)
    return [d for d in digests if d not in leave_out]


def read_signatures(saved_model_dir: Path) -> dict[str, Any]:
    """The signature defs of a SavedModel as plain data (what TF Serving will expose)."""
    from shipyard.exporter.source import read_saved_model

    proto = read_saved_model(saved_model_dir)
    meta_graph = next(m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags)
    return {
        name: {
            "method_name": sig.method_name,
            "inputs": {k: _tensor_info(v) for k, v in sig.inputs.items()},
            "outputs": {k: _tensor_info(v) for k, v in sig.outputs.items()},
        }
        for name, sig in sorted(meta_graph.signature_def.items())
        # TF2 adds `__saved_model_init_op` (initialisation, not a signature clients call).
        if not name.startswith("__")
    }


def _tensor_info(info: Any) -> dict[str, Any]:
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else [None if d.size < 0 else d.size for d in shape.dim]
    return {"dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": dims}
