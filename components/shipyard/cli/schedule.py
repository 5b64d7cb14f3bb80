"""`shipyard schedule create`: recurring runs of the reference pipeline on Kubeflow Pipelines."""

from __future__ import annotations

import click

from shipyard.cli.options import json_option
from shipyard.cli.output import describe_schedule, emit, library_prints_to_stderr
from shipyard.core.vocabulary import LABELS, STABLE


@click.group("schedule")
def schedule_group() -> None:
    """Recurring pipeline runs on Kubeflow Pipelines."""


@schedule_group.command("create")
@click.option("--host", required=True, help="The KFP API endpoint, e.g. https://kfp.example.")
@click.option("--cron", "cron", required=True,
              help="When: a cron expression (5 fields, or KFP's 6 with seconds first).")
@click.option("--repository", required=True, help="The model repository the runs publish to.")
@click.option("--model-name", default="demo-model", show_default=True)
@click.option("--tracking-uri", default="", help="MLflow the runs record to.")
@click.option("--serving-label", default=STABLE, show_default=True,
              type=click.Choice(LABELS))
@click.option("--name", default="shipyard-reference", show_default=True,
              help="The recurring run's name.")
@click.option("--experiment", default="shipyard", show_default=True)
@click.option("--image", default=None, help="The shipyard image (default: the released one).")
@click.option("--accelerator", type=click.Choice(["none", "gpu", "tpu"]), default="none",
              show_default=True, help="Where the export step runs.")
@json_option("Print the result as JSON.")
def schedule_create_command(host: str, cron: str, repository: str, model_name: str,
                            tracking_uri: str, serving_label: str, name: str, experiment: str,
                            image: str | None, accelerator: str, as_json: bool) -> None:
    """Create a KFP recurring run of the reference pipeline: one run at a time
    (max_concurrency 1), no catch-up of missed runs."""
    from shipyard.demo.kfp_pipeline import build_pipeline
    from shipyard.kfp.components import DEFAULT_IMAGE
    from shipyard.kfp.schedule import create_schedule, kfp_cron

    kfp_cron(cron)  # a bad expression fails before anything is compiled or sent
    with library_prints_to_stderr():  # the KFP client prints links to stdout
        doc = create_schedule(host, cron, name=name, experiment=experiment,
                              params={"repository": repository, "model_name": model_name,
                                      "tracking_uri": tracking_uri,
                                      "serving_label": serving_label},
                              pipeline=build_pipeline(image or DEFAULT_IMAGE, accelerator))
    emit(doc, as_json, describe_schedule(doc, name, host))
