"""ShipyardPusher: a TFX component that exports, verifies, registers, publishes and labels a
trained model, and records the result the way TFX's Pusher does.

Inputs: `model` (Model: the SavedModel under Format-Serving, as Trainer writes it, or a .keras
file in the artifact's directory), `model_blessing` (optional ModelBlessing) and
`infra_blessing` (optional InfraBlessing): an unblessed model is not pushed, as with Pusher.
Outputs: `exported_model` (Model: the published version under Format-Serving) and
`pushed_model` (PushedModel) with Pusher's custom properties `pushed` (1/0),
`pushed_destination` and `pushed_version`, plus `mlflow_run_id` and
`registered_model_version`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from shipyard.repository import materialize

MODEL = "model"
MODEL_BLESSING = "model_blessing"
INFRA_BLESSING = "infra_blessing"
EXPORTED_MODEL = "exported_model"
PUSHED_MODEL = "pushed_model"


class ShipyardPusherSpec(ComponentSpec):
    PARAMETERS = {
        "model_name": ExecutionParameter(type=str),
        "export_spec": ExecutionParameter(type=str),  # the export spec, as YAML text
        "repository": ExecutionParameter(type=str),  # a path or an fsspec URL
        "tracking_uri": ExecutionParameter(type=str, optional=True),
        "registry_uri": ExecutionParameter(type=str, optional=True),
        "serving_label": ExecutionParameter(type=str, optional=True),  # stable | canary
        "serving_address": ExecutionParameter(type=str, optional=True),
        # The TensorFlow of the serving image to verify on ("2.19"), "none", or unset for
        # the default (see `shipyard export --serving-runtime`).
        "serving_runtime": ExecutionParameter(type=str, optional=True),
        # Recorded for `shipyard rollout start`, which runs the canary on the cluster.
        "rollout_policy": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL: ChannelParameter(type=standard_artifacts.Model),
        MODEL_BLESSING: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        INFRA_BLESSING: ChannelParameter(type=standard_artifacts.InfraBlessing, optional=True),
    }
    OUTPUTS = {
        EXPORTED_MODEL: ChannelParameter(type=standard_artifacts.Model),
        PUSHED_MODEL: ChannelParameter(type=standard_artifacts.PushedModel),
    }


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        import yaml

        from shipyard.flow import ExportRequest
        from shipyard.registry.client import RegistryLocation
        from shipyard.ship import ship_model
        from shipyard.spec import parse_spec

        pushed = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL])
        exported = artifact_utils.get_single_instance(output_dict[EXPORTED_MODEL])
        if not _blessed(input_dict):
            pushed.set_int_custom_property("pushed", 0)
            return
        model = artifact_utils.get_single_instance(input_dict[MODEL])
        request = ExportRequest(
            model=model_path(model.uri),
            spec=parse_spec(yaml.safe_load(exec_properties["export_spec"]),
                            source="export_spec"),
            repo=exec_properties["repository"], name=exec_properties["model_name"],
            serving_runtime=exec_properties.get("serving_runtime") or None)
        location = RegistryLocation.resolve(exec_properties.get("tracking_uri") or None,
                                            exec_properties.get("registry_uri") or None)
        result = ship_model(request, location,
                            label=exec_properties.get("serving_label") or None,
                            serving_address=exec_properties.get("serving_address") or None,
                            pipeline_run_id=_pipeline_run_id(self._context))
        registered = result.registered
        materialize(registered.path, Path(exported.uri) / "Format-Serving")
        for artifact in (exported, pushed):
            artifact.set_string_custom_property("mlflow_run_id", registered.run_id)
            artifact.set_int_custom_property("registered_model_version", registered.version)
        # Exactly what TFX's Pusher writes (int pushed, strings destination and version).
        pushed.set_int_custom_property("pushed", 1)
        pushed.set_string_custom_property("pushed_destination", registered.path)
        pushed.set_string_custom_property("pushed_version", str(registered.version))


class ShipyardPusher(base_component.BaseComponent):
    SPEC_CLASS = ShipyardPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, *, model_name: str, export_spec: str,
                 repository: str, model_blessing: types.BaseChannel | None = None,
                 infra_blessing: types.BaseChannel | None = None,
                 tracking_uri: str | None = None, registry_uri: str | None = None,
                 serving_label: str | None = None, serving_address: str | None = None,
                 rollout_policy: str | None = None, serving_runtime: str | None = None):
        spec = ShipyardPusherSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
            model_name=model_name, export_spec=export_spec, repository=repository,
            tracking_uri=tracking_uri, registry_uri=registry_uri, serving_label=serving_label,
            serving_address=serving_address, rollout_policy=rollout_policy,
            serving_runtime=serving_runtime,
            exported_model=types.Channel(type=standard_artifacts.Model),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        super().__init__(spec=spec)


def model_path(uri: str) -> Path:
    """Where the trained model is inside a Model artifact: Trainer's Format-Serving
    SavedModel, else the one .keras file, else the directory itself (a SavedModel)."""
    root = Path(uri)
    serving = root / "Format-Serving"
    if serving.is_dir():
        return serving
    keras_files = sorted(root.glob("*.keras"))
    if len(keras_files) == 1:
        return keras_files[0]
    return root


def _blessed(input_dict: dict[str, list[types.Artifact]]) -> bool:
    """As TFX's Pusher: a given blessing must say blessed (custom property `blessed` == 1)."""
    for key in (MODEL_BLESSING, INFRA_BLESSING):
        artifacts = input_dict.get(key) or []
        if artifacts and artifact_utils.get_single_instance(artifacts).get_int_custom_property(
                "blessed") != 1:
            return False
    return True


def _pipeline_run_id(context: Any) -> str | None:
    return getattr(context, "pipeline_run_id", None) if context is not None else None
