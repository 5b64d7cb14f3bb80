"""The export specs the tests share, defined once. A test module defines its own spec only where
its test needs a different one, and says why. Importing this module imports no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import yaml

from shipyard.demo.spec import DEMO_CLASSES

# The functional test model's and the demo model's classes: their StringLookup vocabulary
# (shipyard.demo.model.COLORS, which imports TensorFlow to build the model).
COLORS = list(DEMO_CLASSES)

# The sequential test models (sequential, sequential_tanh, noisy, nan, dropout, nested, lambda):
# one float32 input `x` of shape [None, 3].
SEQUENTIAL_SPEC = {"endpoints": [{"name": "serve", "method": "call",
                                  "inputs": [{"name": "x", "shape": [None, 3],
                                              "dtype": "float32"}]}]}

# The functional test model (inputs x1 and color), with a collection of each kind of selector.
FUNCTIONAL_SPEC = {
    "endpoints": [{"name": "serve", "method": "call", "training": False,
                   "inputs": [{"x1": {"shape": [None, 3], "dtype": "float32"},
                               "color": {"shape": [None, 1], "dtype": "string"}}]}],
    "variable_collections": [
        {"name": "optimizer_variables", "select": "optimizer"},
        {"name": "trainable", "select": "trainable"},
        {"name": "kernels", "select": {"regex": r"/kernel$"}},
    ],
}

# The functional model's inputs as features of serialized tf.Examples.
FEATURES = {"x1": {"shape": [3], "dtype": "float32"},
            "color": {"shape": [1], "dtype": "string", "default": ""}}


def kinds_spec(default: str = "classify") -> dict:
    """The functional model behind a predict, a classify and a regress endpoint of tf.Examples."""
    return {"endpoints": [
        {"name": "serve", "method": "call", "inputs": [{"name": "examples", "tf_example": FEATURES}]},
        {"name": "classify", "kind": "classify", "method": "call", "output": "probs",
         "classes": list(COLORS), "inputs": [{"tf_example": FEATURES}]},
        {"name": "regress", "kind": "regress", "method": "call", "output": "score",
         "inputs": [{"tf_example": FEATURES}]},
    ], "default_endpoint": default}


def write_spec(directory: Path, spec: dict, name: str = "spec.yaml") -> Path:
    """`spec` as the YAML file a user passes to --spec."""
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(spec))
    return path
