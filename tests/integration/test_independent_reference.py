"""The export is held to an independent reference: the source loaded by its own library in a
separate process (exporter/reference_process.py), never the exporting process's optimized
load. A fault of that load is caught, and the model is exported again from Keras's own load;
a model that answers otherwise on every load is refused; a reference that cannot answer
stops the export. Each published version is read back with TF Serving's session loader."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from support.exports import export

from shipyard.core.errors import VerificationError
from shipyard.core.manifest import read_manifest

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}
X = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]], np.float32)


def served(version_dir: Path, x: np.ndarray) -> np.ndarray:
    """The version's answer through TF Serving's loader (TF1 session, tags {serve})."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
        signature = meta_graph.signature_def["serve"]
        (output,) = signature.outputs.values()
        return session.run(output.name, {signature.inputs["x"].name: x})


def keras_answer(path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.saving.load_model(path)(x))


def test_a_layer_reading_its_weight_in_build_ships_with_keras_own_answers(launcher, tmp_path):
    """The issue's case: the optimized load fills the variable with its initializer before the
    layer reads it, as Keras does; the published version answers x * 3 + 3."""
    from support.build_time_reads import ReadsInBuild, saved_model_with

    path = saved_model_with(ReadsInBuild(), tmp_path / "reads.keras")
    result = export(launcher, path, SPEC, tmp_path / "repo")

    np.testing.assert_allclose(served(Path(result.path), X), X * 3.0 + 3.0, atol=1e-6)
    np.testing.assert_allclose(served(Path(result.path), X), keras_answer(path, X), atol=1e-6)
    verification = read_manifest(Path(result.path)).verification
    assert verification["reference"]["loader"] == "keras.saving.load_model"
    assert verification["reference"]["process"] == "separate, CPU only"
    assert verification["export_loader"] == "shipyard optimized load (keras_loading)"


def test_a_wrong_optimized_load_is_caught_and_the_model_exported_from_keras_own_load(
        launcher, tmp_path, caplog):
    """A read inside a tf.function in build() escapes the optimized load's guard: its answers
    differ from the independent reference's, so the model is loaded Keras's own way and the
    version published from that load answers x * 3 + 6, as Keras's load does."""
    from support.build_time_reads import ReadsInFunction, saved_model_with

    path = saved_model_with(ReadsInFunction(), tmp_path / "in-function.keras")
    with caplog.at_level(logging.WARNING, logger="shipyard.steps.export"):
        result = export(launcher, path, SPEC, tmp_path / "repo")

    np.testing.assert_allclose(served(Path(result.path), X), X * 3.0 + 6.0, atol=1e-6)
    np.testing.assert_allclose(served(Path(result.path), X), keras_answer(path, X), atol=1e-6)
    assert read_manifest(Path(result.path)).verification["export_loader"] == (
        "keras.saving.load_model")
    assert "shipyard's optimized load answers otherwise than Keras's own load" in caplog.text
    published = [n for n in os.listdir(tmp_path / "repo" / "m") if not n.startswith(".")]
    assert result.version == 1 and published == ["1"]  # the first attempt left nothing


def test_nan_from_the_optimized_load_is_not_believed_before_keras_own_load_answers(
        launcher, tmp_path, caplog):
    """A layer answering NaN when its build-time read finds the variable unfilled: NaN from
    the optimized load is that load's fault, not the model's. The export is not refused with
    "the original model answers NaN"; the model is loaded Keras's own way and published from
    that load, answering x * 3 + 1."""
    from support.build_time_reads import NanUnlessInitialized, saved_model_with

    path = saved_model_with(NanUnlessInitialized(), tmp_path / "nan-unless.keras")
    with caplog.at_level(logging.WARNING, logger="shipyard.steps.export"):
        result = export(launcher, path, SPEC, tmp_path / "repo")

    np.testing.assert_allclose(served(Path(result.path), X), X * 3.0 + 1.0, atol=1e-6)
    assert read_manifest(Path(result.path)).verification["export_loader"] == (
        "keras.saving.load_model")
    assert re.search(r"shipyard's optimized load answers otherwise than Keras's own load "
                     r"\(endpoint 'serve' output '\w+': the original model answers NaN or "
                     r"Inf", caplog.text)


def test_a_model_that_answers_otherwise_on_every_load_is_refused(launcher, models, tmp_path):
    """Unseeded noise at inference: the exporting process's load (the optimized one, then
    Keras's own) and the reference's never agree. Refused, nothing published."""
    repo = tmp_path / "repo"
    with pytest.raises(VerificationError,
                       match=r"(?s)answers otherwise each time it is loaded: the exporting "
                             r"process's load \(keras.saving.load_model\) and "
                             r"keras.saving.load_model in a separate process differ on the "
                             r"same inputs; nothing was published:\n  - endpoint 'serve' "
                             r"output 'out' \(batch 1\): max abs error .* exceeds the tolerance"
                             r".*make them deterministic"):
        export(launcher, models.path("noisy"), SPEC, repo)
    assert not (repo / "m").exists()


def test_active_dropout_compares_exactly_with_an_unseeded_seed_state(launcher, models, tmp_path):
    """An unseeded Dropout draws another seed state in every process: the reference process
    is given the exporting process's states, so a `training: true` endpoint still compares."""
    spec = {"endpoints": [
        {"name": "serve", "method": "call", "training": False,
         "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]},
        {"name": "train", "method": "call", "training": True,
         "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}
    result = export(launcher, models.path("dropout"), spec, tmp_path / "repo")
    assert result.manifest.parity["train"]["max_abs_error"] <= 1e-6


def test_a_killed_reference_process_stops_the_export(launcher, models, tmp_path):
    verifier = launcher()
    os.kill(verifier.reference.pid, signal.SIGKILL)
    repo = tmp_path / "repo"

    with pytest.raises(VerificationError,
                       match=r"the independent reference for .*sequential.keras failed, so "
                             r"the export cannot be verified; nothing was published: the "
                             r"reference process exited with code -9 \(crashed or killed\); "
                             r"its last lines:"):
        export(lambda: verifier, models.path("sequential"), SPEC, repo)
    assert not (repo / "m").exists()


def test_a_class_only_the_exporting_process_knows_stops_the_export(launcher, tmp_path):
    """A custom class defined in the script that runs the export (module __main__): a fresh
    process cannot import it, so Keras's own load there fails and says what to pass."""
    import keras

    class Halved(keras.layers.Layer):
        def call(self, x):
            return x / 2.0

    Halved.__module__ = "__main__"  # as a class defined in the exporting script is
    keras.saving.register_keras_serializable(package="shipyard_script")(Halved)
    inputs = keras.Input((3,))
    keras.Model(inputs, Halved()(inputs)).save(tmp_path / "script.keras")
    repo = tmp_path / "repo"

    with pytest.raises(VerificationError,
                       match=r"nothing was published: keras.saving.load_model fails on "
                             r".*script.keras in a fresh process: TypeError: .*could not be "
                             r"deserialized.*\(pass --import MODULE naming the module that "
                             r"registers the model's custom classes"):
        export(launcher, tmp_path / "script.keras", SPEC, repo)
    assert not (repo / "m").exists()
