"""ModuleTrainer: TFX's Trainer contract, for where TFX's own Trainer cannot be imported.

TFX's Trainer executor (tfx/components/trainer/executor.py) imports
tfx.components.statistics_gen.stats_artifact_utils, which imports TensorFlow Data Validation;
TFDV 1.21, the only release beside TFX 1.21, ships only manylinux_2_39 wheels, so on glibc
2.36 (Debian 12) neither the executor nor the Trainer component (which imports it) loads.
ModuleTrainer keeps everything else of TFX's Trainer: its ComponentSpec (TrainerSpec: the
`examples` input, `train_args`/`eval_args`, `module_file` or `run_fn`, `custom_config`, the
`model` and `model_run` outputs), TFX's own FnArgs built by TFX's own get_common_fn_args, and
TFX's module loading (udf_utils.get_fn). A module file that runs under one runs under the
other. What it leaves out: the `statistics` input (it is TFDV's) and packaging the module file
into a wheel (TFX does that for remote runners; pass `run_fn` as a module path there).

`trainer_component()` picks TFX's Trainer where it imports, else ModuleTrainer.
"""

from __future__ import annotations

import json
from typing import Any

from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import io_utils, json_utils, path_utils

_MISSING_TFDV = "tensorflow_data_validation"


class Executor(base_executor.BaseExecutor):
    """TFX's GenericExecutor.Do (tfx/components/trainer/executor.py), minus the statistics
    input: the same FnArgs, the same run_fn lookup, the same check that a model was written."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        fn_args = fn_args_utils.get_common_fn_args(input_dict, exec_properties)
        if fn_args.custom_config and not isinstance(fn_args.custom_config, dict):
            raise ValueError("custom_config in execution properties needs to be a dict. Got "
                             f"{type(fn_args.custom_config).__name__} instead.")
        output_path = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.MODEL_KEY])
        fn_args.serving_model_dir = path_utils.serving_model_dir(output_path)
        fn_args.eval_model_dir = path_utils.eval_model_dir(output_path)
        fn_args.model_run_dir = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.MODEL_RUN_KEY])
        fn_args.transform_output = fn_args.transform_graph_path
        fn_args.schema_file = fn_args.schema_path
        hyperparameters = input_dict.get(standard_component_specs.HYPERPARAMETERS_KEY)
        if hyperparameters:
            path = io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(hyperparameters))
            fn_args.hyperparameters = json.loads(io_utils.read_string_file(path))
        run_fn = udf_utils.get_fn(exec_properties, "run_fn")
        run_fn(fn_args)
        if not fileio.exists(fn_args.serving_model_dir):
            raise RuntimeError(f"run_fn wrote no model: {fn_args.serving_model_dir} does not "
                               "exist; save the serving SavedModel to fn_args.serving_model_dir")


class ModuleTrainer(base_component.BaseComponent):
    """TFX's Trainer spec and arguments (less `statistics`), run by the Executor above."""

    SPEC_CLASS = standard_component_specs.TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, *, module_file: str | None = None,
                 run_fn: str | None = None, train_args: trainer_pb2.TrainArgs | None = None,
                 eval_args: trainer_pb2.EvalArgs | None = None,
                 custom_config: dict[str, Any] | None = None,
                 schema: types.BaseChannel | None = None,
                 transform_graph: types.BaseChannel | None = None,
                 base_model: types.BaseChannel | None = None,
                 hyperparameters: types.BaseChannel | None = None):
        if [bool(module_file), bool(run_fn)].count(True) != 1:
            raise ValueError("Exactly one of 'module_file', or 'run_fn' must be supplied.")
        spec = standard_component_specs.TrainerSpec(
            examples=examples, schema=schema, transform_graph=transform_graph,
            base_model=base_model, hyperparameters=hyperparameters,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            module_file=module_file, run_fn=run_fn,
            # As Trainer: JSON text in MLMD, read back by get_common_fn_args.
            custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)


def tfx_trainer_unavailable() -> str | None:
    """Why TFX's own Trainer cannot run here (None when it can): importing its executor is
    the check, since that import is what fails without TFDV."""
    try:
        import tfx.components.trainer.executor  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != _MISSING_TFDV:
            raise  # another missing module is a broken install, not this known gap
        return ("TFX's Trainer executor imports TensorFlow Data Validation "
                "(tfx/components/trainer/executor.py -> statistics_gen/stats_artifact_utils), "
                "which is not installed: TFDV 1.21 ships only glibc 2.39 (manylinux_2_39) "
                "wheels")
    return None


def trainer_component() -> type:
    """TFX's Trainer where it imports, else ModuleTrainer: both take examples=, module_file= or
    run_fn=, train_args=, eval_args= and custom_config=, and output `model` (the SavedModel
    under Format-Serving) and `model_run`."""
    if tfx_trainer_unavailable() is None:
        from tfx.components.trainer.component import Trainer

        return Trainer
    return ModuleTrainer
