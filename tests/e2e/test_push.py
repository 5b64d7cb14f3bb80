"""`shipyard push` as concurrent processes against one repository and one server (the
TF-Serving-protocol test double, support/tf_serving_double.py): no update is lost."""

from __future__ import annotations

import subprocess

from support.processes import SHIPYARD, subprocess_env
from support.serving_client import predict
from support.versions import add_version, config_of

from shipyard.serving.config import ModelServing, model_serving


def test_eight_concurrent_pushes_lose_no_update(published, repo, tf_serving):
    names = [f"m{i}" for i in range(4)]
    for name in names:
        add_version(repo, name, 1, published / "m" / "1")
        add_version(repo, name, 2, published / "m" / "1")
    children = [subprocess.Popen([SHIPYARD, "-q", "push", "--repo", str(repo), "--name", name,
                                  "--version", str(version), "--label", label,
                                  "--serving-address", tf_serving.address, "--timeout", "120",
                                  "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env())
                for name in names for version, label in ((1, "stable"), (2, "canary"))]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    config = config_of(repo)  # parses: every write was whole
    for name in names:
        assert model_serving(config, name) == ModelServing((1, 2), {"stable": 1, "canary": 2})
    # Configs reached the server in the order they were written: it ends with the file's.
    assert tf_serving.reload_requests[-1] == config
    for name in names:
        assert predict(tf_serving.address, name, label="canary")[0] == 2
