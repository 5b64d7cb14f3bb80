"""`shipyard demo`, the README's main job, on its embedded defaults."""

from __future__ import annotations

import json

import pytest

from shipyard.manifest import checksum_mismatches, read_manifest

pytestmark = pytest.mark.integration


def test_demo_trains_exports_verifies_and_publishes(cli, tmp_path):
    workdir = tmp_path / "demo"
    result = cli("demo", "--workdir", str(workdir), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["export"]["name"] == "demo-model"
    assert document["export"]["version"] == 1
    assert document["export"]["variable_collections"]["optimizer_variables"] > 0
    version_dir = workdir / "models" / "demo-model" / "1"
    assert checksum_mismatches(version_dir, read_manifest(version_dir)) == []

    again = cli("demo", "--workdir", str(workdir))
    assert again.exit_code == 0, again.stderr
    assert "Published demo-model version 2" in again.stdout
