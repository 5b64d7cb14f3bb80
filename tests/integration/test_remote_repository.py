"""`shipyard export` and `push` on an object-store repository (fsspec's memory://): a real export
published by upload, then a push that refuses a version corrupted after it. (The repository's
upload and checksum checks on their own: unit/test_remote_repository.py.)"""

from __future__ import annotations

import json

import fsspec
from support.specs import SEQUENTIAL_SPEC, write_spec

from shipyard.serving.config import ModelServing, model_serving, parse_config


def test_export_and_push_on_memory_refuse_a_corrupted_version(cli, models, url, tmp_path):
    spec = write_spec(tmp_path, SEQUENTIAL_SPEC)
    exported = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo", url,
                   "--name", "m", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["path"] == f"{url}/m/1"

    push = ["push", "--repo", url, "--name", "m", "--version", "1", "--label", "stable"]
    assert cli(*push).exit_code == 0  # loads 1
    assert cli(*push).exit_code == 0  # labels it
    fs = fsspec.filesystem("memory")
    config = parse_config(fs.cat_file(f"{url}/models.config").decode())
    assert model_serving(config, "m") == ModelServing((1,), {"stable": 1})
    assert config.model_config_list.config[0].base_path == f"{url}/m"

    fs.pipe_file(f"{url}/m/1/saved_model.pb", b"tampered")
    refused = cli(*push[:-1], "canary")
    assert refused.exit_code == 2
    assert "fails its checksums" in refused.stderr
    assert "saved_model.pb: content differs from shipyard.json" in refused.stderr
    assert model_serving(parse_config(fs.cat_file(f"{url}/models.config").decode()), "m") == \
        ModelServing((1,), {"stable": 1})
