"""The reference KFP pipeline: train a small model, then ship it with shipyard's components.

    train (the demo model) -> ship (export on CPU/GPU/TPU, verify on CPU, register, publish,
    label) [-> push to a server, -> validate against the champion, -> rollout: on a cluster]

Compile:  .venv/bin/python pipelines/kfp_pipeline.py --accelerator gpu --output pipeline.yaml
Run here: .venv/bin/python pipelines/kfp_pipeline.py --run-locally --workdir .shipyard/kfp
(kfp.local's SubprocessRunner; accelerator settings compile into the YAML but are ignored
locally).
"""

# (No "from __future__ import annotations": KFP reads the types of component signatures.)

import argparse
import json
import sys
from pathlib import Path

from kfp import compiler, dsl

from shipyard.demo import DEMO_SPEC
from shipyard.kfp.components import ACCELERATORS, DEFAULT_IMAGE, accelerate, make_components

DEVICES = {"none": "", "gpu": "/GPU:0", "tpu": "/TPU:0"}


def build_pipeline(image: str = DEFAULT_IMAGE, accelerator: str = "none"):
    components = make_components(image)

    @dsl.component(base_image=image)
    def train(model: dsl.Output[dsl.Model]) -> None:
        """Stands in for a team's trainer: the demo model, saved as model.keras."""
        from pathlib import Path

        from shipyard.export.demo_model import train_demo_model

        Path(model.path).mkdir(parents=True, exist_ok=True)
        train_demo_model(Path(model.path) / "model.keras")

    @dsl.pipeline(name="shipyard-reference",
                  description="Train a model, then export, verify, register and label it.")
    def reference(repository: str, tracking_uri: str = "", model_name: str = "demo-model",
                  serving_label: str = "stable",
                  # One line (JSON is YAML): KFP copies defaults into the YAML's header
                  # comments, where a multi-line string would break the file.
                  export_spec: str = json.dumps(DEMO_SPEC)) -> int:
        trained = train()
        shipped = components.ship(model=trained.outputs["model"], model_name=model_name,
                                  export_spec=export_spec, repository=repository,
                                  tracking_uri=tracking_uri, serving_label=serving_label,
                                  device=DEVICES[accelerator])
        accelerate(shipped, accelerator)
        return shipped.outputs["Output"]

    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="none")
    parser.add_argument("--output", default="shipyard-pipeline.yaml")
    parser.add_argument("--run-locally", action="store_true")
    parser.add_argument("--workdir", default=".shipyard/kfp")
    args = parser.parse_args(argv)
    pipeline = build_pipeline(args.image, args.accelerator)
    if not args.run_locally:
        compiler.Compiler().compile(pipeline, args.output)
        print(args.output)
        return 0
    from kfp import local

    workdir = Path(args.workdir).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(workdir / "pipeline-root"))
    run = pipeline(repository=str(workdir / "models"),
                   tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    print(f"version {run.output} published under {workdir / 'models'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
