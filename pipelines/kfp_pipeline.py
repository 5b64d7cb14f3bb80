"""Compile or run the reference KFP pipeline (shipyard.demo.kfp_pipeline): train, then ship.

Compile:  .venv/bin/python pipelines/kfp_pipeline.py --accelerator gpu --output pipeline.yaml
Run here: .venv/bin/python pipelines/kfp_pipeline.py --run-locally --workdir .shipyard/kfp
(kfp.local's SubprocessRunner; accelerator settings compile into the YAML but are ignored
locally).
"""

import argparse
import sys
from pathlib import Path

from kfp import compiler

from shipyard.demo.kfp_pipeline import build_pipeline
from shipyard.kfp.components import ACCELERATORS, DEFAULT_IMAGE


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
