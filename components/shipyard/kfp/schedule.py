"""`shipyard schedule create`: a pipeline (the CLI passes the reference one,
shipyard.demo.kfp_pipeline) as a KFP recurring run.

One run at a time (max_concurrency 1) and no catch-up: a scheduled run that would overlap the
previous one waits, and runs missed while the schedule was paused are not replayed. Together
with the per-model locks and Lease, overlapping scheduled runs never interleave.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from shipyard.core.errors import ShipyardError, UsageError


def kfp_cron(expression: str) -> str:
    """KFP's cron has a seconds field first: a 5-field expression gets "0 " in front."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise UsageError(f"cron: expected 5 fields (minute hour day month weekday) or 6 (with "
                     f"seconds first), got {len(fields)} in {expression!r}", param="cron")


def create_schedule(host: str, cron: str, *, name: str, experiment: str,
                    params: dict[str, Any], pipeline: Callable[..., Any],
                    client_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """`pipeline`: a @dsl.pipeline function, compiled here."""
    from kfp import Client, compiler

    schedule = kfp_cron(cron)
    with tempfile.TemporaryDirectory() as tmp:
        package = str(Path(tmp) / "shipyard-pipeline.yaml")
        compiler.Compiler().compile(pipeline, package)
        try:
            client = (client_factory or Client)(host=host)
            experiment_id = client.create_experiment(experiment).experiment_id
            run = client.create_recurring_run(
                experiment_id=experiment_id, job_name=name, cron_expression=schedule,
                pipeline_package_path=package, params=params, max_concurrency=1,
                no_catchup=True, enabled=True)
        except Exception as err:  # the client's HTTP and API errors, whatever their class
            raise ShipyardError(
                f"host {host}: Kubeflow Pipelines refused the recurring run or could not be "
                f"reached: {type(err).__name__}: {str(err).strip()[:300]}. Check --host and "
                "your access to it", param="host") from None
    return {"recurring_run_id": run.recurring_run_id, "experiment_id": experiment_id,
            "name": name, "cron": schedule, "host": host, "params": params,
            "max_concurrency": 1, "no_catchup": True}
