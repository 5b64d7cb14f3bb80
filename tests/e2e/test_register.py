"""`shipyard register` as concurrent processes against one MLflow server and repository."""

from __future__ import annotations

import json
import subprocess

from support.processes import SHIPYARD, subprocess_env
from support.specs import SEQUENTIAL_SPEC, write_spec


def test_two_concurrent_registrations_get_distinct_versions(models, mlflow_server, tmp_path):
    repo = tmp_path / "repo"
    spec = str(write_spec(tmp_path, SEQUENTIAL_SPEC))
    children = [subprocess.Popen([SHIPYARD, "register", str(models.path(kind)), "--spec", spec,
                                  "--repo", str(repo), "--name", "reg-f", "--tracking-uri",
                                  mlflow_server.uri, "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env())
                for kind in ("sequential", "sequential_tanh")]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err
    versions = sorted(json.loads(out)["version"] for out, _ in outputs)
    assert versions == [1, 2]
    assert sorted(p.name for p in (repo / "reg-f").iterdir() if p.is_dir()) == ["1", "2"]
