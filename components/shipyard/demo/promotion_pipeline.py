"""The second reference KFP pipeline: promotion across environments.

    copy (staging's `champion` -> production, byte for byte, proven there, recorded with its
    lineage, `candidate` moved) -> rollout (the canary rollout of that version on the
    cluster the pipeline runs in)

Staging and production are each a model repository and an MLflow store, all given as
pipeline parameters; staging is only read. The model keeps its name in production.

The rollout needs a cluster (Deployments, the Gateway route, the Lease), which kfp.local does
not have: `build_pipeline(rollout=False)` builds the pipeline without that task (same
parameters; `rollout_policy` and `namespace` are then unused), to run it locally. A build
switch, like the accelerator's, and not a `dsl.If` on a parameter: kfp.local (2.16) evaluates
every `dsl.If` condition as false, so a local run would skip the rollout whatever the
parameter said and prove nothing about the switch.

Used by `shipyard schedule create --pipeline promotion`.
"""

# (No "from __future__ import annotations": KFP reads the types of component signatures.)
import json

from kfp import dsl

from shipyard.kfp.components import DEFAULT_IMAGE, make_components

# The rollout when none is given: 10% then 50% of the traffic, each step held while the
# canary's error rate stays under 1% (shipyard.rollout.policy documents the fields). One line
# of JSON (JSON is YAML): KFP copies defaults into the YAML's header comments.
DEFAULT_ROLLOUT_POLICY = json.dumps({
    "steps": [{"weight": 10, "pause_seconds": 120}, {"weight": 50, "pause_seconds": 300}],
    "gates": {"max_error_rate": 0.01}}, separators=(",", ":"))


def build_pipeline(image: str = DEFAULT_IMAGE, rollout: bool = True):
    components = make_components(image)

    @dsl.pipeline(name="shipyard-promotion",
                  description="Copy staging's champion to production, then roll it out there.")
    def promotion(from_repo: str, to_repo: str, from_tracking_uri: str, to_tracking_uri: str,
                  model_name: str = "demo-model", from_registry_uri: str = "",
                  to_registry_uri: str = "", source_alias: str = "champion",
                  to_alias: str = "candidate", reason: str = "", serving_runtime: str = "",
                  rollout_policy: str = DEFAULT_ROLLOUT_POLICY,
                  namespace: str = "shipyard") -> int:
        copied = components.copy(
            model_name=model_name, alias=source_alias, from_repo=from_repo, to_repo=to_repo,
            from_tracking_uri=from_tracking_uri, from_registry_uri=from_registry_uri,
            to_tracking_uri=to_tracking_uri, to_registry_uri=to_registry_uri,
            to_alias=to_alias, reason=reason, serving_runtime=serving_runtime,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        if rollout:
            components.rollout(model_name=model_name, version=copied.outputs["Output"],
                               policy=rollout_policy, namespace=namespace,
                               tracking_uri=to_tracking_uri, registry_uri=to_registry_uri)
        return copied.outputs["Output"]

    return promotion
