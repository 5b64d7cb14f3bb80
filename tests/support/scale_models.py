"""The smallest real SavedModels a TF Serving test needs: version N answers y = x * N (so an
answer shows which version a label reached), with a variable, so loading has to restore it."""

from __future__ import annotations

from pathlib import Path


def save_scale_model(path: Path, factor: float) -> None:
    """Writes a SavedModel answering {"y": x * factor} as serving_default at `path`."""
    import tensorflow as tf

    class Scale(tf.Module):
        def __init__(self, factor: float):
            super().__init__()
            self.factor = tf.Variable(factor)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * self.factor}

    module = Scale(factor)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
