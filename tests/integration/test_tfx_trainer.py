"""The demo's Trainer module file under TFX's Trainer contract: run by TFX's own Trainer where
TFDV is installed (its executor imports TFDV), and by shipyard's ModuleTrainer, which calls the
same run_fn with TFX's own FnArgs, everywhere. Both under LocalDagRunner with SQLite MLMD, on
CsvExampleGen's examples of the demo CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.demo import trainer_module as demo_trainer_module
from shipyard.tfx.trainer import tfx_trainer_unavailable

MODULE_FILE = demo_trainer_module.__file__
# Checked by importing TFX's Trainer executor: that import is what needs TFDV.
TFX_TRAINER_MISSING = tfx_trainer_unavailable()


def run_pipeline(root: Path, trainer_class: type, **trainer_args) -> Path:
    """CsvExampleGen on the demo CSV, then the trainer; returns its Format-Serving dir."""
    from tfx.components.example_gen.csv_example_gen.component import CsvExampleGen
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from shipyard.demo.model import write_demo_csv

    write_demo_csv(root / "data" / "demo.csv", seed=0, count=300)
    example_gen = CsvExampleGen(input_base=str(root / "data"))
    trainer = trainer_class(examples=example_gen.outputs["examples"], **trainer_args)
    LocalDagRunner().run(tfx_pipeline.Pipeline(
        pipeline_name="trainer-test", pipeline_root=str(root / "pipeline-root"),
        components=[example_gen, trainer],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            str(root / "mlmd.sqlite"))))
    served = list((root / "pipeline-root").rglob("Format-Serving"))
    assert len(served) == 1, served
    return served[0]


def check_serving_model(model_dir: Path, root: Path) -> None:
    """serving_default takes serialized tf.Examples (`examples`, string [None]) and answers
    the examples ExampleGen made: the held-out split, labels and all."""
    import numpy as np
    import tensorflow as tf

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["examples"]
    assert (spec.dtype, spec.shape.as_list()) == (tf.string, [None])
    split = next((root / "pipeline-root").rglob("Split-eval"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        sorted(str(p) for p in split.iterdir()), compression_type="GZIP")]
    outputs = signature(examples=tf.constant(records))
    assert outputs["probs"].shape == (len(records), 3)
    assert outputs["score"].shape == (len(records), 1)
    # It learned the color class (what the canary's agreement gate relies on).
    parsed = tf.io.parse_example(records, demo_trainer_module.LABEL_SPEC)
    predicted = np.argmax(outputs["probs"].numpy(), axis=1)
    assert (predicted == parsed["label_class"].numpy()[:, 0]).mean() > 0.95


@pytest.mark.skipif(TFX_TRAINER_MISSING is not None, reason=str(TFX_TRAINER_MISSING))
def test_tfx_own_trainer_runs_the_module_file(tmp_path):
    from tfx.components.trainer.component import Trainer

    model_dir = run_pipeline(tmp_path, Trainer, module_file=MODULE_FILE,
                             custom_config={"seed": 0})
    check_serving_model(model_dir, tmp_path)


def test_module_trainer_runs_the_same_module_file_with_tfx_fn_args(tmp_path):
    from tfx.proto import trainer_pb2

    from shipyard.tfx.trainer import ModuleTrainer

    # The module file's path, as TFX's Trainer takes it; num_steps as TFX's TrainArgs say.
    model_dir = run_pipeline(tmp_path, ModuleTrainer, module_file=MODULE_FILE,
                             train_args=trainer_pb2.TrainArgs(num_steps=60),
                             custom_config={"seed": 0})
    assert model_dir.parent.parent.parent.name == "ModuleTrainer"
    check_serving_model(model_dir, tmp_path)


def test_trainer_component_is_tfx_own_where_it_imports():
    from shipyard.tfx.trainer import ModuleTrainer, trainer_component

    chosen = trainer_component()
    if TFX_TRAINER_MISSING is None:
        assert chosen.__module__ == "tfx.components.trainer.component"
    else:
        assert chosen is ModuleTrainer
        assert "TensorFlow Data Validation" in TFX_TRAINER_MISSING


def test_module_trainer_needs_exactly_one_of_module_file_and_run_fn():
    from tfx.types import channel, standard_artifacts

    from shipyard.tfx.trainer import ModuleTrainer

    examples = channel.Channel(type=standard_artifacts.Examples)
    with pytest.raises(ValueError, match="Exactly one of 'module_file', or 'run_fn'"):
        ModuleTrainer(examples=examples)
    with pytest.raises(ValueError, match="Exactly one of 'module_file', or 'run_fn'"):
        ModuleTrainer(examples=examples, module_file=MODULE_FILE,
                      run_fn="shipyard.demo.trainer_module.run_fn")


def test_module_trainer_fails_when_run_fn_writes_no_model(tmp_path):
    """The executor's own check, as TFX's: a run_fn that saves nothing fails the step."""
    from tfx.types import standard_artifacts

    from shipyard.demo.model import demo_rows, write_demo_tfrecord
    from shipyard.tfx.trainer import Executor

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = '["train", "eval"]'
    rows = demo_rows(40, seed=0)
    write_demo_tfrecord(tmp_path / "examples" / "Split-train" / "data.gz", rows[:30])
    write_demo_tfrecord(tmp_path / "examples" / "Split-eval" / "data.gz", rows[30:])
    module = tmp_path / "lazy_module.py"
    module.write_text("def run_fn(fn_args):\n    pass  # trains nothing, saves nothing\n")
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(tmp_path / "model"), str(tmp_path / "model_run")
    with pytest.raises(RuntimeError, match=r"run_fn wrote no model: .*Format-Serving does not "
                                           r"exist"):
        Executor().Do({"examples": [examples]}, {"model": [model], "model_run": [model_run]},
                      {"module_file": str(module), "train_args": "{}", "eval_args": "{}",
                       "custom_config": "null"})
