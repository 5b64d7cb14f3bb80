"""What `shipyard copy` records of a source registry (steps/copy.py, pure parts)."""

from __future__ import annotations

import pytest

from shipyard.steps.copy import public_uri


@pytest.mark.parametrize("uri, public", [
    ("postgresql://ml:s3cret@db.staging:5432/mlflow", "postgresql://db.staging:5432/mlflow"),
    ("https://token@mlflow.staging.example/", "https://mlflow.staging.example/"),
    ("http://mlflow.staging:5000", "http://mlflow.staging:5000"),
    ("sqlite:////var/lib/mlflow.db", "sqlite:////var/lib/mlflow.db"),
    ("databricks", "databricks"),
])
def test_a_source_registry_is_recorded_without_its_credentials(uri, public):
    assert public_uri(uri) == public
