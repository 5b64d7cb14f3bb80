"""The pipeline's steps, one module each; they compose the adapters."""
