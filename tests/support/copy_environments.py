"""A staging environment for `shipyard copy`'s tests: an embedded MLflow store and a
repository holding `churn` version 1, registered, published and `champion`."""

from __future__ import annotations

from pathlib import Path

import yaml

from support.specs import SEQUENTIAL_SPEC


def sqlite_uri(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def staging_environment(models, launcher, root: Path) -> dict:
    """{"uri", "repo", "registered"}: `churn` version 1 registered from the small test model,
    `champion` moved to it by hand (with force: champion moves only by rollout otherwise)."""
    from shipyard.core.spec import load_spec
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import move_alias
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    uri = sqlite_uri(root / "mlflow")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SEQUENTIAL_SPEC))
    request = ExportRequest(model=models.path("sequential"), spec=load_spec(spec_path),
                            repo=root / "repo", name="churn")
    location = RegistryLocation.resolve(uri, uri)
    registered = register_model(request, location, launch_verifier=launcher)
    move_alias(ModelRegistry(location), "churn", "champion", registered.version,
               reason="won in staging", force=True)
    return {"uri": uri, "repo": root / "repo", "registered": registered}
