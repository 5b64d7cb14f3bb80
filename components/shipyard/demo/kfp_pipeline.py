"""The reference KFP pipeline: train a small model, then ship it with shipyard's components.

    train (the demo model) -> ship (export on CPU/GPU/TPU, verify on CPU, register, publish,
    label)

Used by `pipelines/kfp_pipeline.py` (compile, or run locally) and `shipyard schedule create`.
"""

# (No "from __future__ import annotations": KFP reads the types of component signatures.)
import json

from kfp import dsl

from shipyard.demo.spec import KERAS_DEMO_SPEC
from shipyard.kfp.components import DEFAULT_IMAGE, accelerate, make_components

DEVICES = {"none": "", "gpu": "/GPU:0", "tpu": "/TPU:0"}


def build_pipeline(image: str = DEFAULT_IMAGE, accelerator: str = "none"):
    components = make_components(image)

    @dsl.component(base_image=image)
    def train(model: dsl.Output[dsl.Model]) -> None:
        """Stands in for a team's trainer: the demo model, saved as model.keras."""
        from pathlib import Path

        from shipyard.demo.model import train_demo_model

        Path(model.path).mkdir(parents=True, exist_ok=True)
        train_demo_model(Path(model.path) / "model.keras")

    @dsl.pipeline(name="shipyard-reference",
                  description="Train a model, then export, verify, register and label it.")
    def reference(repository: str, tracking_uri: str = "", model_name: str = "demo-model",
                  serving_label: str = "stable",
                  # One line (JSON is YAML): KFP copies defaults into the YAML's header
                  # comments, where a multi-line string would break the file.
                  export_spec: str = json.dumps(KERAS_DEMO_SPEC)) -> int:
        trained = train()
        shipped = components.ship(model=trained.outputs["model"], model_name=model_name,
                                  export_spec=export_spec, repository=repository,
                                  tracking_uri=tracking_uri, serving_label=serving_label,
                                  device=DEVICES[accelerator],
                                  pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        accelerate(shipped, accelerator)
        return shipped.outputs["Output"]

    return reference
