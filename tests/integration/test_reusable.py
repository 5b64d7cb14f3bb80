"""TF Hub's reusable SavedModel interface (spec `reusable: true`), checked with TF Hub's own
client: `hub.KerasLayer(version, trainable=True)` under tf_keras, in a process of its own
(TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is imported; this process runs Keras 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.exports import export
from support.hub_example import (
    GUIDE_INPUT,
    GUIDE_LOSSES,
    GUIDE_OUTPUT,
    hub_client,
    save_hub_example,
)

from shipyard.core.errors import SpecError, VerificationError
from shipyard.core.spec import Tolerance, parse_spec

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}],
        "reusable": True}
X = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 4.0

@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """A functional model whose Dense layers carry kernel regularizers, with a Dropout between
    them (so training=True answers otherwise), saved as .keras; and what Keras says of it."""
    import keras

    keras.utils.set_random_seed(11)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden",
                                kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
    hidden = keras.layers.Dropout(0.5, name="dropout")(hidden)
    outputs = keras.layers.Dense(2, name="scores",
                                 kernel_regularizer=keras.regularizers.L1(0.001))(hidden)
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("reusable") / "model.keras"
    model.save(path)
    return {"path": path, "inference": model(X, training=False).numpy(),
            "trainable_weights": len(model.trainable_weights),
            "losses": [float(loss) for loss in model.losses]}


@pytest.fixture(scope="module")
def reusable_version(launcher, keras_model, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    result = export(launcher, keras_model["path"], SPEC, repo)
    return Path(result.path)


def test_keras_export_with_reusable_fine_tunes_in_tf_hub(keras_model, reusable_version):
    found = hub_client(reusable_version, X)

    assert found["tf_keras_layer"]  # TF Hub's client on Keras 2 (tf_keras), as it needs
    np.testing.assert_allclose(found["inference"], keras_model["inference"], atol=1e-5)
    assert found["training_differs"]  # __call__ was traced for training=True: dropout is on
    assert found["trainable_weights"] == keras_model["trainable_weights"] == 4
    assert len(keras_model["losses"]) == 2
    np.testing.assert_allclose(found["losses"], keras_model["losses"], rtol=1e-6)
    assert found["changed"] == [True] * 4  # one gradient step moved every trainable weight


def test_the_export_keeps_serving_and_has_the_interface(reusable_version):
    import tensorflow as tf

    from shipyard.exporter.reusable import has_reusable_interface

    assert has_reusable_interface(reusable_version)
    loaded = tf.saved_model.load(str(reusable_version))
    assert set(loaded.signatures) == {"serve", "serving_default"}  # no signature added
    assert len(loaded.regularization_losses) == 2


def test_check_reusable_passed_in_the_export(keras_model, reusable_version):
    """The export ran TF Hub's client on the version (reusable_check.py) and recorded it; its
    expectations came from the source model."""
    from shipyard.core.manifest import read_manifest
    from shipyard.exporter.reusable import expectations
    from shipyard.exporter.source import load_source_model

    expected = expectations(load_source_model(keras_model["path"]), parse_spec(SPEC), [X])
    assert expected["trainable_count"] == 4
    np.testing.assert_allclose(expected["regularization_losses"], keras_model["losses"],
                               rtol=1e-6)
    record = read_manifest(reusable_version).verification["reusable"]
    assert record["client"] == "tensorflow_hub.KerasLayer 0.16.1 (tf_keras 2.21.0)"
    assert record["trainable_weights"] == 4
    np.testing.assert_allclose(record["regularization_losses"], keras_model["losses"],
                               rtol=1e-6)
    assert record["gradient_step"] == "changed 4 of 4 trainable weights"
    assert record["max_abs_error"] <= 1e-5


def test_tf_hubs_guide_example(tmp_path):
    """The guide's object has the interface; shipped whole with reusable: true it passes
    check_reusable in the export (test_whole_saved_model.py)."""
    from shipyard.exporter.reusable import has_reusable_interface

    path = save_hub_example(tmp_path / "my_mul")
    assert has_reusable_interface(path)


def test_expectations_of_a_saved_model_source_come_from_its_own_interface(tmp_path):
    from shipyard.exporter.reusable import expectations
    from shipyard.exporter.source import load_source_model

    path = save_hub_example(tmp_path / "my_mul")
    spec = parse_spec({"endpoints": [{"name": "serve", "method": "__call__", "inputs": [
        {"name": "inputs", "shape": [None], "dtype": "float32"}]}], "reusable": True})
    expected = expectations(load_source_model(path), spec, [np.array(GUIDE_INPUT, np.float32)])
    np.testing.assert_allclose(expected["expected_outputs"]["output_0"], GUIDE_OUTPUT)
    assert expected["trainable_count"] == 1
    np.testing.assert_allclose(expected["regularization_losses"], GUIDE_LOSSES, rtol=1e-6)
    # check_reusable on a version shipped whole from it: test_whole_saved_model.py.


def test_check_reusable_names_what_differs(tmp_path):
    from shipyard.exporter.reusable_check import check_reusable

    # The guide's object with v = 3: its __call__ answers [30., 60.], its loss is 0.009.
    wrong = save_hub_example(tmp_path / "wrong", v_init=3.0)
    with pytest.raises(VerificationError) as raised:
        check_reusable(wrong, np.array(GUIDE_INPUT, np.float32),
                       {"output_0": np.array(GUIDE_OUTPUT, np.float32)}, 2, GUIDE_LOSSES,
                       Tolerance())
    assert str(raised.value) == (
        "the version's reusable interface does not work in TF Hub's client "
        "(tensorflow_hub.KerasLayer 0.16.1 (tf_keras 2.21.0), hub.KerasLayer(version, "
        "trainable=True)); nothing was published:\n"
        "  - __call__(inputs, training=False) output 'output_0' differs from the model's: max "
        "abs error 20 exceeds the tolerance (atol=1e-05, rtol=1e-05)\n"
        "  - KerasLayer has 1 trainable weights, the model 2 (the version's trainable_variables)\n"
        "  - KerasLayer's regularization losses are [0.009], the model's weight regularization "
        "losses [0.004]")


def test_check_reusable_finds_a_call_that_does_not_read_its_trainable_variables(tmp_path):
    import tensorflow as tf

    from shipyard.exporter.reusable_check import check_reusable

    class Detached(tf.train.Checkpoint):
        """The guide's object, but __call__ reads a copy of v that is not trainable: it
        answers and regularizes like the guide's, yet fine-tuning cannot move it."""

        def __init__(self):
            super().__init__()
            self.v = tf.Variable(2.0)
            self.copy = tf.Variable(2.0, trainable=False)
            self.variables = [self.v, self.copy]
            self.trainable_variables = [self.v]
            self.regularization_losses = [
                tf.function(input_signature=[])(lambda: 0.001 * self.v**2)]

        @tf.function(input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)])
        def __call__(self, inputs):
            return tf.multiply(inputs, self.copy)

    path = tmp_path / "detached"
    tf.saved_model.save(Detached(), str(path))
    with pytest.raises(VerificationError, match=(
            r"nothing was published:\n  - one gradient step \(tf_keras SGD, learning rate "
            r"0\.1\) changed none of the 1 trainable weights: their gradients are None for 1 "
            r"and zero for 0 of them \(__call__ does not read trainable_variables\?\)$")):
        check_reusable(path, np.array(GUIDE_INPUT, np.float32),
                       {"output_0": np.array(GUIDE_OUTPUT, np.float32)}, 1, GUIDE_LOSSES,
                       Tolerance())


def test_check_reusable_refuses_a_version_without_the_interface(keras_model, tmp_path):
    import keras

    from shipyard.exporter.reusable import has_reusable_interface
    from shipyard.exporter.reusable_check import check_reusable

    plain = tmp_path / "plain"
    keras.saving.load_model(keras_model["path"]).export(str(plain), verbose=False)
    assert not has_reusable_interface(plain)  # Keras's own export has signatures only
    with pytest.raises(VerificationError, match=(
            r"^the version's reusable interface does not load in TF Hub's client "
            r"\(tensorflow_hub\.KerasLayer 0\.16\.1 \(tf_keras 2\.21\.0\)\); nothing was "
            r"published: hub\.KerasLayer\(version, trainable=True\) fails: ValueError: Signature "
            r"name has to be specified for non-callable saved models \(if not legacy TF1 Hub "
            r"format\)\. Without `reusable`, the version ships with its serving signatures "
            r"only$")):
        # Keras's export has signatures only; KerasLayer without `signature=` needs __call__.
        check_reusable(plain, X, {"scores": keras_model["inference"]}, 4,
                       keras_model["losses"], Tolerance())


def test_a_saved_model_source_without_the_interface_is_refused(keras_model, tmp_path):
    import keras

    from shipyard.exporter.reusable import add_interface
    from shipyard.exporter.source import load_source_model

    plain = tmp_path / "plain"
    keras.saving.load_model(keras_model["path"]).export(str(plain), verbose=False)
    with pytest.raises(SpecError, match=(
            r"^reusable: true, but the SavedModel .*plain lacks TF Hub's reusable interface "
            r"\(the root object's __call__, variables, trainable_variables, "
            r"regularization_losses; it has \['trainable_variables', 'variables'\]\), and "
            r"shipyard cannot add it to a SavedModel: save the model with them")):
        add_interface(None, load_source_model(plain), parse_spec(SPEC))


@pytest.mark.parametrize("endpoint, message", [
    ({"name": "serve", "method": "call",
      "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"},
                 {"name": "y", "shape": [None, 3], "dtype": "float32"}]},
     r"^reusable: TF Hub's __call__ takes one positional argument \(a tensor, a dict or a list "
     r"of tensors\), built on the default endpoint's inputs, and endpoints\[0\] \('serve'\) "
     r"declares 2: make the default endpoint one whose method takes one argument, or remove "
     r"`reusable`$"),
    ({"name": "serve", "method": "call", "kind": "regress",
      "inputs": [{"tf_example": {"x": {"shape": [3], "dtype": "float32"}}}]},
     r"^reusable: TF Hub's __call__ takes the model's features, built on the default "
     r"endpoint's inputs, and endpoints\[0\] \('serve'\) takes serialized tf\.Examples: make a "
     r"predict endpoint over the features the default_endpoint \(the tf\.Example endpoints can "
     r"stay\), or remove `reusable`$"),
])
def test_the_default_endpoint_must_fit_tf_hubs_call(keras_model, endpoint, message):
    from shipyard.exporter.reusable import add_interface
    from shipyard.exporter.source import load_source_model

    spec = parse_spec({"endpoints": [endpoint], "reusable": True})
    with pytest.raises(SpecError, match=message):
        add_interface(None, load_source_model(keras_model["path"]), spec)


def test_expectations_refuse_a_default_endpoint_that_does_not_fit_a_restored_call(tmp_path):
    from shipyard.exporter.reusable import expectations
    from shipyard.exporter.source import load_source_model

    path = save_hub_example(tmp_path / "my_mul")
    spec = parse_spec({"endpoints": [{"name": "serve", "method": "__call__", "inputs": [
        {"name": "ids", "shape": [None], "dtype": "int64"}]}], "reusable": True})
    with pytest.raises(SpecError, match=(
            r"^reusable: the SavedModel's __call__ does not take the default endpoint's inputs, "
            r"which TF Hub's client is checked on \((TypeError|ValueError): .*\); make the "
            r"default endpoint `method: __call__`, declaring the inputs its __call__ takes$")):
        expectations(load_source_model(path), spec, [np.array([1, 2], np.int64)])
