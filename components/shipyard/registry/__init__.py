"""The only package that imports MLflow: runs, registered model versions, aliases and their
audit trail. Importing this package is cheap; MLflow is imported by its submodules."""
