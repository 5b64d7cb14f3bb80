"""Real parts: TensorFlow exports, verifier processes, MLflow servers, Beam, TFX and KFP local
runs, the TF Serving double. Marked `integration` by tests/conftest.py."""
