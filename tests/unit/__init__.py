"""Pure and fast: no TensorFlow export, verifier process, MLflow server or `shipyard` child
process; no module imports TensorFlow at import time. Run with `scripts/test tests/unit`."""
