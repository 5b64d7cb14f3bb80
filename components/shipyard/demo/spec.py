"""The demo's name, features and export specs: plain data, importable without TensorFlow."""

from __future__ import annotations

DEMO_NAME = "demo-model"
# The demo model's classes: its StringLookup vocabulary (shipyard.demo.model.COLORS),
# here so that the spec needs no TensorFlow import.
DEMO_CLASSES = ("red", "green", "blue")
# The features the Trainer module's `serving_default` parses (one per CSV column: ExampleGen
# makes scalar features); the module file builds its tf.io feature spec from this.
DEMO_FEATURES = {
    "x1_0": {"shape": [1], "dtype": "float32"},
    "x1_1": {"shape": [1], "dtype": "float32"},
    "x1_2": {"shape": [1], "dtype": "float32"},
    "color": {"shape": [1], "dtype": "string", "default": ""},
}
# The Trainer's SavedModel: predict over serialized examples (its own signature) and TF
# Serving's Classify API over the same examples, classes from `probs`.
DEMO_SPEC = {
    "endpoints": [
        {"name": "serve", "method": "serving_default",
         "inputs": [{"name": "examples", "tf_example": DEMO_FEATURES}]},
        {"name": "classify", "kind": "classify", "method": "serving_default",
         "output": "probs", "classes": list(DEMO_CLASSES),
         "inputs": [{"tf_example": DEMO_FEATURES}]},
    ],
    "default_endpoint": "serve",
    "tolerance": {"atol": 1e-5, "rtol": 1e-5},
}
# The demo model saved as a .keras file (what the KFP reference pipeline ships): dict inputs.
KERAS_DEMO_SPEC = {
    "endpoints": [
        {"name": "serve", "method": "call", "training": False,
         "inputs": [{"x1": {"shape": [None, 3], "dtype": "float32"},
                     "color": {"shape": [None, 1], "dtype": "string"}}]},
    ],
    "variable_collections": [
        {"name": "optimizer_variables", "select": "optimizer"},
        {"name": "trainable", "select": "trainable"},
    ],
    "default_endpoint": "serve",
    "tolerance": {"atol": 1e-5, "rtol": 1e-5},
}
SAMPLE_EXAMPLES = 500
# The challenger must pick the same class as the champion on 95% of the sample. Its `score`
# (a regression output) is reported but not gated: a retrained model never matches it within
# the export tolerance.
MIN_AGREEMENT = 0.95
AGREEMENT_OUTPUTS = ("probs",)

