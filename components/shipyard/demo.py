"""`shipyard demo`: the whole job on embedded defaults, on a small model trained here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from shipyard.export.verifier import VerifierProcess, start_verifier
from shipyard.flow import ExportRequest, export_model
from shipyard.progress import NullProgress, Progress
from shipyard.spec import parse_spec

DEMO_NAME = "demo-model"
DEMO_SPEC = {
    "endpoints": [
        {"name": "serve", "method": "call", "training": False,
         "inputs": [{"x1": {"shape": [None, 3], "dtype": "float32"},
                     "color": {"shape": [None, 1], "dtype": "string"}}]},
    ],
    "variable_collections": [
        {"name": "optimizer_variables", "select": "optimizer"},
        {"name": "trainable", "select": "trainable"},
    ],
    "default_endpoint": "serve",
    "tolerance": {"atol": 1e-5, "rtol": 1e-5},
}


def run_demo(workdir: Path, *, progress: Progress = NullProgress(),
             launch_verifier: Callable[[], VerifierProcess] = start_verifier) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    verifier = launch_verifier()  # its TensorFlow import overlaps the training below
    spec_path = workdir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(DEMO_SPEC, sort_keys=False))
    try:
        with progress.step("train the demo model"):
            from shipyard.export.demo_model import train_demo_model

            model_path = train_demo_model(workdir / "demo.keras")
    except BaseException:
        verifier.close()  # export_model closes it otherwise
        raise
    request = ExportRequest(model=model_path, spec=parse_spec(DEMO_SPEC, source=str(spec_path)),
                            repo=workdir / "models", name=DEMO_NAME)
    result = export_model(request, progress=progress, launch_verifier=lambda: verifier)
    return {"export": result.to_json(), "repo": str(request.repo), "model": str(model_path),
            "spec": str(spec_path)}
