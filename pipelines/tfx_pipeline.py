"""Run the reference TFX pipeline (shipyard.demo.tfx_pipeline): ExampleGen, Trainer, then ship.

    CsvExampleGen (the demo CSV, written under WORKDIR/data) -> Trainer (the module file
    shipyard.demo.trainer_module: TFX's Trainer where TFDV is installed, else shipyard's
    ModuleTrainer) -> ShipyardPusher (export with predict and classify endpoints, verify on
    CPU, MLflow run and version, publish, models.config label)

Run here:   .venv/bin/python pipelines/tfx_pipeline.py --workdir .shipyard/tfx
(LocalDagRunner, SQLite MLMD at WORKDIR/mlmd.sqlite, MLflow at WORKDIR/mlflow.db, models under
WORKDIR/models). The pipeline itself is `shipyard.demo.tfx_pipeline.build_pipeline`; on Kubeflow,
compile it with KubeflowV2DagRunner onto the shipyard image.
"""

import argparse
import json
import sys
from pathlib import Path

from shipyard.demo.tfx_pipeline import build_pipeline, last_push


def main(argv: list[str] | None = None) -> int:
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".shipyard/tfx")
    parser.add_argument("--label", default="stable", choices=["stable", "canary", "none"],
                        help="the models.config label to point at the version")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    LocalDagRunner().run(build_pipeline(
        workdir, repository=str(workdir / "models"),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        serving_label=None if args.label == "none" else args.label))
    print(json.dumps(last_push(workdir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
