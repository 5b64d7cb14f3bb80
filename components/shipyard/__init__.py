"""shipyard: export, verify, register and roll out TensorFlow/Keras models to TF Serving."""

__version__ = "0.1.0"
