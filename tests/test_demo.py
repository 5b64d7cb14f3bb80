"""`shipyard demo`, the README's main job, on its embedded defaults."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shipyard.cli import main
from shipyard.manifest import checksum_mismatches, read_manifest

pytestmark = pytest.mark.integration


def test_demo_trains_exports_verifies_and_publishes(launcher, tmp_path):
    runner = CliRunner()
    workdir = tmp_path / "demo"
    result = runner.invoke(main, ["demo", "--workdir", str(workdir), "--json"],
                           obj={"launch_verifier": launcher})
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["export"]["name"] == "demo-model"
    assert document["export"]["version"] == 1
    assert document["export"]["variable_collections"]["optimizer_variables"] > 0
    version_dir = workdir / "models" / "demo-model" / "1"
    assert checksum_mismatches(version_dir, read_manifest(version_dir)) == []

    again = runner.invoke(main, ["demo", "--workdir", str(workdir)],
                          obj={"launch_verifier": launcher})
    assert again.exit_code == 0, again.stderr
    assert "Published demo-model version 2" in again.stdout
