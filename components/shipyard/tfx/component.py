"""ShipyardPusher: a TFX component that exports, verifies, registers, publishes and labels a
trained model, and records the result the way TFX's Pusher does.

Inputs: `model` (Model: the SavedModel under Format-Serving, as Trainer writes it, or a .keras
file in the artifact's directory), `model_blessing` (optional ModelBlessing),
`infra_blessing` (optional InfraBlessing): an unblessed model is not pushed, as with Pusher;
and `examples` (optional Examples, as InfraValidator takes): real tf.Examples for the
verification of tf_example endpoints (the `eval` split, else the first split).
Outputs: `exported_model` (Model: the published version under Format-Serving) and
`pushed_model` (PushedModel: the published version's files in the artifact's directory, as
Pusher leaves a copy there) with Pusher's custom properties `pushed` (1 = published),
`pushed_destination` and `pushed_version`, plus `serving_label_state` (`applied` or
`pending`; absent when no serving_label was asked), `mlflow_run_id` and
`registered_model_version`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from shipyard.files.trees import is_url, local_tree, materialize

if TYPE_CHECKING:  # imported where used, as the executor does: importing this stays light
    from shipyard.steps.export import ExportRequest

MODEL = "model"
MODEL_BLESSING = "model_blessing"
INFRA_BLESSING = "infra_blessing"
EXPORTED_MODEL = "exported_model"
PUSHED_MODEL = "pushed_model"
EXAMPLES = "examples"
# The split whose examples verify the export: the held-out one when ExampleGen made it.
PREFERRED_SPLIT = "eval"


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
        # 1: warmup records from the real examples too (off by default: real examples may
        # hold personal data, and the version's files travel widely). An int, not a bool:
        # MLMD stores it as one anyway, and KubeflowV2DagRunner's compiler puts a bool in an
        # int_value field, which protobuf deprecates.
        "warmup_from_examples": ExecutionParameter(type=int, optional=True),
        # A PEM private key on the worker (a mounted Secret): the version is signed with it
        # before it is published (shipyard export --sign-key). Unset: $SHIPYARD_SIGNING_KEY,
        # else unsigned.
        "sign_key": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL: ChannelParameter(type=standard_artifacts.Model),
        MODEL_BLESSING: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        INFRA_BLESSING: ChannelParameter(type=standard_artifacts.InfraBlessing, optional=True),
        EXAMPLES: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        EXPORTED_MODEL: ChannelParameter(type=standard_artifacts.Model),
        PUSHED_MODEL: ChannelParameter(type=standard_artifacts.PushedModel),
    }


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        from shipyard.registry.client import RegistryLocation
        from shipyard.steps.ship import ship_model

        pushed = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL])
        exported = artifact_utils.get_single_instance(output_dict[EXPORTED_MODEL])
        if not _blessed(input_dict):
            pushed.set_int_custom_property("pushed", 0)
            return
        location = RegistryLocation.resolve(exec_properties.get("tracking_uri") or None,
                                            exec_properties.get("registry_uri") or None)
        model = artifact_utils.get_single_instance(input_dict[MODEL])
        with local_tree(model.uri) as model_dir:  # downloaded when the pipeline root is remote
            result = ship_model(export_request(input_dict, exec_properties, model_dir),
                                location, label=exec_properties.get("serving_label") or None,
                                serving_address=exec_properties.get("serving_address") or None,
                                pipeline_run_id=_pipeline_run_id(self._context))
        registered = result.registered
        materialize(registered.path, f"{exported.uri.rstrip('/')}/Format-Serving")
        # TFX's Pusher (tfx/components/pusher/executor.py, TFX 1.21) archives the pushed model
        # in the PushedModel artifact: `io_utils.copy_dir(model_path, model_push.uri)`, into
        # the artifact's uri itself, not a versioned subdirectory (that was TFX 0.x's layout).
        # Same place here, as hard links of the published version: no second copy of the bytes.
        materialize(registered.path, pushed.uri)
        for artifact in (exported, pushed):
            artifact.set_string_custom_property("mlflow_run_id", registered.run_id)
            artifact.set_int_custom_property("registered_model_version", registered.version)
        # Exactly what TFX's Pusher writes (int pushed, strings destination and version).
        # pushed=1 means published: register_model returns only once the version is in the
        # repository with its checksums. Whether serving moved is serving_label_state's
        # business: a file-only label step is legitimately unfinished.
        pushed.set_int_custom_property("pushed", 1)
        pushed.set_string_custom_property("pushed_destination", registered.path)
        pushed.set_string_custom_property("pushed_version", str(registered.version))
        if result.pushed is not None:  # no serving_label: no label step, no state to record
            pushed.set_string_custom_property(
                "serving_label_state", label_state(result.pushed))


class ShipyardPusher(base_component.BaseComponent):
    SPEC_CLASS = ShipyardPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, *, model_name: str, export_spec: str,
                 repository: str, model_blessing: types.BaseChannel | None = None,
                 infra_blessing: types.BaseChannel | None = None,
                 tracking_uri: str | None = None, registry_uri: str | None = None,
                 serving_label: str | None = None, serving_address: str | None = None,
                 rollout_policy: str | None = None, serving_runtime: str | None = None,
                 examples: types.BaseChannel | None = None, warmup_from_examples: bool = False,
                 sign_key: str | None = None):
        spec = ShipyardPusherSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
            examples=examples, warmup_from_examples=int(warmup_from_examples),
            sign_key=sign_key,
            model_name=model_name, export_spec=export_spec, repository=repository,
            tracking_uri=tracking_uri, registry_uri=registry_uri, serving_label=serving_label,
            serving_address=serving_address, rollout_policy=rollout_policy,
            serving_runtime=serving_runtime,
            exported_model=types.Channel(type=standard_artifacts.Model),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        super().__init__(spec=spec)


def export_request(input_dict: dict[str, list[types.Artifact]],
                   exec_properties: dict[str, Any], model_dir: Path | None = None
                   ) -> ExportRequest:
    """The ExportRequest for the component's inputs and parameters; `model_dir`: a local copy
    of the Model artifact's directory, when its uri is remote."""
    import yaml

    from shipyard.core.spec import parse_spec
    from shipyard.signing.keys import signing_key
    from shipyard.steps.export import ExportRequest

    model = artifact_utils.get_single_instance(input_dict[MODEL])
    examples = input_dict.get(EXAMPLES) or []
    local = model_path(str(model_dir) if model_dir is not None else model.uri)
    source_location = None
    if model_dir is not None and is_url(model.uri):  # a downloaded copy (local_tree)
        inside = local.relative_to(model_dir).as_posix()
        source_location = model.uri.rstrip("/") + ("" if inside == "." else f"/{inside}")
    return ExportRequest(
        model=local, source_location=source_location,
        spec=parse_spec(yaml.safe_load(exec_properties["export_spec"]), source="export_spec"),
        repo=exec_properties["repository"], name=exec_properties["model_name"],
        serving_runtime=exec_properties.get("serving_runtime") or None,
        examples=examples_location(artifact_utils.get_single_instance(examples))
        if examples else None,
        warmup_from_examples=bool(exec_properties.get("warmup_from_examples") or 0),
        sign=signing_key(exec_properties.get("sign_key") or None))


def examples_location(examples: types.Artifact) -> str:
    """The directory of TFRecord files to verify on: ExampleGen's Split-eval/ when there is an
    `eval` split, else the first split's; an Examples artifact without split names (say,
    imported) is taken as one directory of TFRecord files."""
    splits = artifact_utils.decode_split_names(examples.split_names) \
        if examples.split_names else []
    if not splits:
        return examples.uri
    split = PREFERRED_SPLIT if PREFERRED_SPLIT in splits else splits[0]
    return artifact_utils.get_split_uri([examples], split)


def label_state(push_result: dict[str, Any]) -> str:
    """`applied` when the label points at the version (push's `complete`), else `pending`:
    without a server the label step stops after the load step, and the same push run again
    once the version is loaded moves the label."""
    return "applied" if push_result["complete"] else "pending"


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
