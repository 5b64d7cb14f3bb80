"""The MLflow pyfunc flavour of a shipyard version: `predict(x)` answers with the default
endpoint (serving_default) of the exported SavedModel, so `models:/NAME/N` loads the MLflow
way and computes exactly what TF Serving serves."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from shipyard.core.manifest import Manifest

SAVED_MODEL_ARTIFACT = "saved_model"
SERVING_DEFAULT = "serving_default"


def model_signature(manifest: Manifest) -> Any:
    """A tensor-based MLflow ModelSignature of the default endpoint, from shipyard.json.

    One TensorSpec per input and output, named as in the SavedModel's signature, so MLflow's
    UI shows the inputs and `predict` checks a dict of arrays (or a DataFrame) against them.
    Unknown dimensions are -1. TensorFlow strings are bytes (np.bytes_): what tf.string holds.
    An unknown rank or a dtype numpy has no equivalent for (bfloat16, ...) cannot be stated
    as a TensorSpec: then the model carries no signature rather than a wrong one.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signatures = manifest.signatures or {}
    endpoint = signatures.get(SERVING_DEFAULT) or signatures.get(manifest.default_endpoint)
    if endpoint is None:
        return None

    def specs(tensors: dict[str, Any]) -> Schema | None:
        out = []
        for name in sorted(tensors):
            dtype, shape = tensors[name]["dtype"], tensors[name]["shape"]
            if shape is None:
                return None
            try:
                numpy_dtype = np.dtype(np.bytes_) if dtype == "string" else np.dtype(dtype)
            except TypeError:
                return None
            out.append(TensorSpec(numpy_dtype, tuple(-1 if d is None else d for d in shape),
                                  name))
        return Schema(out)

    inputs, outputs = specs(endpoint["inputs"]), specs(endpoint["outputs"])
    if inputs is None or outputs is None:
        return None
    return ModelSignature(inputs=inputs, outputs=outputs)


class ShipyardSavedModel(mlflow.pyfunc.PythonModel):
    # No type hints on predict: MLflow would try (and fail) to derive a schema from them.
    def load_context(self, context):  # type: ignore[no-untyped-def]
        import tensorflow as tf

        # Keep the loaded object: it owns the variables the signature reads.
        self._loaded = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT])
        self._signature = self._loaded.signatures[SERVING_DEFAULT]

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import numpy as np
        import tensorflow as tf

        specs = self._signature.structured_input_signature[1]
        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
            # A DataFrame: one column per input; a cell may hold a list (one example's tensor).
            model_input = {c: np.stack([np.asarray(v) for v in model_input[c]])
                           for c in model_input.columns}
        if not isinstance(model_input, dict):
            if len(specs) != 1:
                raise ValueError(f"the default endpoint takes inputs {sorted(specs)}; pass a "
                                 "dict (or DataFrame) keyed by those names")
            model_input = {next(iter(specs)): model_input}
        feed = {}
        for name, value in model_input.items():
            value = np.asarray(value)
            if value.ndim == 1 and specs[name].shape.rank == 2 and specs[name].shape[1] == 1:
                value = value[:, None]  # a DataFrame column of scalars feeds a [None, 1] input
            feed[name] = tf.constant(value, dtype=specs[name].dtype)
        outputs = {k: v.numpy() for k, v in self._signature(**feed).items()}
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs
