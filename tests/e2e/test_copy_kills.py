"""A `shipyard copy` SIGKILLed at one of its destination's MLflow requests is completed by
running it again (issue 26, Deliver 2): the fault proxy (support/mlflow_proxy.py) in front of
the real test MLflow server kills the real command as its alias move arrives, the point
where `register`'s kill test found state hidden from a re-run. The re-run is checked as a
registration is (support.register_faults.inconsistencies), plus the copy's lineage."""

from __future__ import annotations

import json
import signal

import pytest
from support.copy_environments import staging_environment
from support.processes import run_until_killed
from support.register_faults import client_for, inconsistencies


@pytest.fixture(scope="module")
def staging(models, launcher, tmp_path_factory):
    return staging_environment(models, launcher, tmp_path_factory.mktemp("staging"))


def test_a_copy_killed_at_its_alias_move_is_completed_by_the_same_command(
        cli, proxy, staging, tmp_path):
    name = "churn-killed"
    arguments = ["copy", "churn", "--alias", "champion", "--from-repo", str(staging["repo"]),
                 "--from-tracking-uri", staging["uri"], "--to-repo", str(tmp_path / "repo"),
                 "--to-tracking-uri", proxy.uri, "--to-name", name, "--serving-runtime",
                 "none", "--json"]
    proxy.arm("kill", matching="POST /api/2.0/mlflow/registered-models/alias")
    code, err = run_until_killed(arguments, proxy)
    assert proxy.fired and code == -signal.SIGKILL, (code, err[-2000:])
    proxy.arm(None)
    assert inconsistencies(proxy.uri, name, tmp_path / "repo"), "the kill left nothing to do"

    again = cli(*arguments)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["reused"] is True  # published before the kill
    assert inconsistencies(proxy.uri, name, tmp_path / "repo") == []
    version = client_for(proxy.uri).get_model_version(name, "1")
    lineage = json.loads(version.tags["shipyard.copied_from"])
    assert (lineage["name"], lineage["version"]) == ("churn", 1)
    assert "Copied from" in version.description
