"""The MLflow pyfunc flavour of a shipyard version: `predict(x)` answers with the default
endpoint (serving_default) of the exported SavedModel, so `models:/NAME/N` loads the MLflow
way and computes exactly what TF Serving serves."""

from __future__ import annotations

import mlflow.pyfunc

SAVED_MODEL_ARTIFACT = "saved_model"


class ShipyardSavedModel(mlflow.pyfunc.PythonModel):
    # No type hints on predict: MLflow would try (and fail) to derive a schema from them.
    def load_context(self, context):  # type: ignore[no-untyped-def]
        import tensorflow as tf

        # Keep the loaded object: it owns the variables the signature reads.
        self._loaded = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT])
        self._signature = self._loaded.signatures["serving_default"]

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
