"""`shipyard schedule create`: recurring runs of a reference pipeline on Kubeflow Pipelines:
`reference` (train, then ship) or `promotion` (copy staging's champion to production, then
roll it out)."""

from __future__ import annotations

import click

from shipyard.cli.options import json_option
from shipyard.cli.output import describe_schedule, emit, library_prints_to_stderr
from shipyard.core.errors import UsageError
from shipyard.core.vocabulary import LABELS, STABLE

PIPELINES = ("reference", "promotion")
REFERENCE_ONLY = ("serving_label", "accelerator")  # the options of the reference's ship step


@click.group("schedule")
def schedule_group() -> None:
    """Recurring pipeline runs on Kubeflow Pipelines."""


@schedule_group.command("create")
@click.option("--pipeline", "pipeline_name", type=click.Choice(PIPELINES), default="reference",
              show_default=True,
              help="reference: train, then ship. promotion: copy the champion of the source "
                   "environment (--param from_repo=URL --param from_tracking_uri=URI) into "
                   "--repository and --tracking-uri, then roll it out there.")
@click.option("--host", required=True, help="The KFP API endpoint, e.g. https://kfp.example.")
@click.option("--cron", "cron", required=True,
              help="When: a cron expression (5 fields, or KFP's 6 with seconds first).")
@click.option("--repository", required=True, help="The model repository the runs publish to.")
@click.option("--model-name", default="demo-model", show_default=True)
@click.option("--tracking-uri", default="", help="MLflow the runs record to.")
@click.option("--serving-label", default=STABLE, show_default=True,
              type=click.Choice(LABELS))
@click.option("--name", default=None,
              help="The recurring run's name (default: shipyard-PIPELINE).")
@click.option("--experiment", default="shipyard", show_default=True)
@click.option("--image", default=None, help="The shipyard image (default: the released one).")
@click.option("--accelerator", type=click.Choice(["none", "gpu", "tpu"]), default="none",
              show_default=True, help="Where the export step runs.")
@click.option("--param", "extra", multiple=True, metavar="NAME=VALUE",
              help="Another parameter of the pipeline (repeatable), e.g. "
                   "from_repo=gs://staging-models.")
@json_option("Print the result as JSON.")
@click.pass_context
def schedule_create_command(ctx: click.Context, pipeline_name: str, host: str, cron: str,
                            repository: str, model_name: str, tracking_uri: str,
                            serving_label: str, name: str | None, experiment: str,
                            image: str | None, accelerator: str, extra: tuple[str, ...],
                            as_json: bool) -> None:
    """Create a KFP recurring run of a reference pipeline: one run at a time
    (max_concurrency 1), no catch-up of missed runs."""
    from shipyard.kfp.components import DEFAULT_IMAGE
    from shipyard.kfp.schedule import create_schedule, kfp_cron, pipeline_params

    kfp_cron(cron)  # a bad expression fails before anything is compiled or sent
    image = image or DEFAULT_IMAGE
    if pipeline_name == "promotion":
        from shipyard.demo.promotion_pipeline import build_pipeline as build_promotion

        for option in REFERENCE_ONLY:
            if ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT:
                raise UsageError(f"{option}: only the reference pipeline has it (its export "
                                 "and label); the promotion pipeline copies a published "
                                 "version and rolls it out", param=option)
        pipeline = build_promotion(image)
        set_by = {"to_repo": "--repository", "to_tracking_uri": "--tracking-uri",
                  "model_name": "--model-name"}
        given = {"to_repo": repository, "to_tracking_uri": tracking_uri,
                 "model_name": model_name}
    else:
        from shipyard.demo.kfp_pipeline import build_pipeline

        pipeline = build_pipeline(image, accelerator)
        set_by = {"repository": "--repository", "tracking_uri": "--tracking-uri",
                  "model_name": "--model-name", "serving_label": "--serving-label"}
        given = {"repository": repository, "model_name": model_name,
                 "tracking_uri": tracking_uri, "serving_label": serving_label}
    params = pipeline_params(pipeline, given, extra, set_by=set_by)
    name = name or f"shipyard-{pipeline_name}"
    with library_prints_to_stderr():  # the KFP client prints links to stdout
        doc = create_schedule(host, cron, name=name, experiment=experiment, params=params,
                              pipeline=pipeline)
    emit(doc, as_json, describe_schedule(doc, name, host))
