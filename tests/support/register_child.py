"""`python -m support.register_child URI REPO NAME EXPORT [WAIT_TIMEOUT_S]`: the MLflow half
of `shipyard register` (steps.register.register_staged) as a process of its own, on a copy of
an export staged and verified once by the test (support.exports.stage). It imports no
TensorFlow, so that many can run at once on a small machine: the concurrency of register is in
MLflow and the repository, not in the export. Prints the result document as its last line;
exits as the command would (ShipyardError's exit code, its message on stderr)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from shipyard.core.errors import ShipyardError
from shipyard.core.manifest import read_manifest, write_manifest
from shipyard.core.spec import parse_spec
from shipyard.registry.client import ModelRegistry, RegistryLocation
from shipyard.repository import open_repository
from shipyard.steps.export import ExportRequest
from shipyard.steps.register import register_staged
from support.specs import SEQUENTIAL_SPEC


def main(uri: str, repo_dir: str, name: str, export: str, wait_timeout_s: str = "600") -> int:
    manifest = dataclasses.replace(read_manifest(Path(export)), name=name)
    request = ExportRequest(model=Path("unused.keras"), spec=parse_spec(SEQUENTIAL_SPEC),
                            repo=repo_dir, name=name)
    repo = open_repository(repo_dir)
    try:
        registry = ModelRegistry(RegistryLocation.resolve(uri))
        with repo.create_staging(name) as staging:
            shutil.copytree(export, staging.path, dirs_exist_ok=True)
            write_manifest(staging.path, manifest)
            result = register_staged(registry, repo, request, staging, manifest,
                                     {"export_seconds": 0.0, "verify_seconds": 0.0},
                                     wait_timeout_s=float(wait_timeout_s))
    except ShipyardError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
