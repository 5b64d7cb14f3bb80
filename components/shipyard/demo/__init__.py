"""The demo: its model, spec and run."""
