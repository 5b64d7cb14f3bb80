"""Export -> verify -> register -> publish -> serve, as one call: what the orchestrator front
doors (the TFX component, the KFP components) run. The CLI runs the same steps one command at
a time (`register`, then `push`), which call the same functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.core.progress import NullProgress, Progress
from shipyard.registry.client import RegistryLocation
from shipyard.steps.export import ExportRequest, VerifierLauncher
from shipyard.steps.register import RegisterResult, register_model


@dataclass
class ShipResult:
    registered: RegisterResult
    pushed: dict[str, Any] | None  # push's result document, None when no label was given

    def to_json(self) -> dict[str, Any]:
        return {**self.registered.to_json(), "pushed": self.pushed}


def ship_model(request: ExportRequest, location: RegistryLocation, *,
               label: str | None = None, serving_address: str | None = None,
               pipeline_run_id: str | None = None, progress: Progress = NullProgress(),
               launch_verifier: VerifierLauncher | None = None) -> ShipResult:
    """Registers (export, verify, MLflow, publish) and, with `label`, points it at the version
    in the repository's models.config (and on the server, with `serving_address`)."""
    from shipyard.repository import open_repository
    from shipyard.steps.push import push_version

    extra = {"launch_verifier": launch_verifier} if launch_verifier is not None else {}
    registered = register_model(request, location, pipeline_run_id=pipeline_run_id,
                                progress=progress, **extra)
    pushed = None
    if label is not None:
        pushed = push_version(open_repository(request.repo), request.name, registered.version,
                              label, serving_address=serving_address,
                              progress=progress).to_json()
    return ShipResult(registered, pushed)
