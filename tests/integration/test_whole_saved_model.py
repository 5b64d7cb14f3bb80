"""SavedModel sources ship whole (issue 23): TF1 graphs with their init ops, checked with TF
Serving's own loader (TF1's session loader) and with saved_model_cli.

The models (support/tf1_models.py) are built the classic way: placeholders, lookup tables
filled only by the SavedModel's main_op or legacy_init_op, SavedModelBuilder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.exports import export
from support.tf1_models import (
    FRUITS,
    LABELS,
    fruit_model,
    legacy_regressor,
    run_with_session_loader,
)

FRUIT_FEATURES = {"fruit": {"shape": [], "dtype": "string", "default": ""},
                  "size": {"shape": [], "dtype": "string", "default": ""},
                  "weights": {"shape": [2], "dtype": "float32"}}
FRUIT_SPEC = {"endpoints": [
    {"name": "serving_default", "method": "serving_default", "inputs": [
        {"fruit": {"shape": [None], "dtype": "string"},
         "size": {"shape": [None], "dtype": "string"},
         "weights": {"shape": [None, 2], "dtype": "float32"}}]},
    {"name": "classify", "method": "classify", "kind": "classify",
     "inputs": [{"tf_example": FRUIT_FEATURES}]},
]}
# Refusals (an endpoint replacing a source signature, a default endpoint serving_default
# cannot answer, a re-save that loses something) are decided before anything is written:
# tests/unit/test_whole.py; test_export.py has one through a whole export.
CITY_FEATURES = {"city": {"shape": [], "dtype": "string", "default": ""},
                 "rooms": {"shape": [], "dtype": "float32", "default": 0.0}}


def example(**features) -> bytes:
    from tensorflow.core.example import example_pb2

    proto = example_pb2.Example()
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], str):
            proto.features.feature[name].bytes_list.value.extend(v.encode() for v in values)
        else:
            proto.features.feature[name].float_list.value.extend(values)
    return proto.SerializeToString()


def test_a_tf1_graph_with_a_main_op_ships_byte_for_byte_and_serves(launcher, tmp_path, repo):
    from shipyard.exporter.whole import COPIED

    source = fruit_model(tmp_path / "fruit")
    result = export(launcher, source, FRUIT_SPEC, repo, name="fruit", serving_runtime="2.19")
    version = Path(result.path)
    assert result.manifest.source["shipped"]["how"] == COPIED
    # TF Serving's TensorFlow replayed the warmup records, Classify ones included, through
    # its session loader.
    runtime = result.manifest.verification["runtimes"]["2.19"]
    assert runtime["status"] == "passed"
    assert runtime["signatures"] == {"classify": 2, "serving_default": 2}
    assert result.manifest.source["shipped"]["graph"] == "TF1"
    for name in ("saved_model.pb", "variables/variables.index",
                 "variables/variables.data-00000-of-00001", "assets/fruit-sizes.txt"):
        assert (version / name).read_bytes() == (source / name).read_bytes(), name
    assert sorted(result.manifest.parity) == ["classify", "serving_default"]
    assert result.manifest.verification["version_loader"].startswith(
        "tf.compat.v1.saved_model.loader.load")

    # TF Serving's loader runs the main op: both tables are filled.
    feeds = {"fruit": np.array([b"cherry", b"kiwi", b"apple"], dtype=object),
             "size": np.array([b"large", b"small", b"huge"], dtype=object),
             "weights": np.array([[0.5, 1.0], [0.0, 0.0], [-1.0, 2.0]], "float32")}
    got = run_with_session_loader(version, "serving_default", feeds)
    want = run_with_session_loader(source, "serving_default", feeds)
    assert got["fruit_id"].tolist() == [FRUITS.index("cherry"), -1, FRUITS.index("apple")]
    np.testing.assert_array_equal(got["score"], want["score"])

    # saved_model_cli, TensorFlow's own client, runs the classify signature on an example.
    cli = Path(sys.executable).parent / "saved_model_cli"
    ran = subprocess.run(
        [str(cli), "run", "--dir", str(version), "--tag_set", "serve", "--signature_def",
         "classify", "--input_examples",
         'inputs=[{"fruit":["cherry"],"size":["large"],"weights":[0.5,1.0]}]'],
        capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    classified = run_with_session_loader(source, "classify", {"inputs": np.array(
        [example(fruit="cherry", size="large", weights=[0.5, 1.0])], dtype=object)})
    assert classified["classes"].tolist() == [[label.encode() for label in LABELS]]
    printed = ran.stdout.split("Result for output key scores:")[1]
    printed_scores = [float(v) for v in printed.replace("[", " ").replace("]", " ").split()[:2]]
    np.testing.assert_allclose(printed_scores, classified["scores"][0], atol=1e-5)


def test_a_tf1_graph_gets_the_signatures_it_lacks_and_keeps_its_legacy_init_op(
        launcher, tmp_path, repo):
    from shipyard.exporter.whole import RESAVED

    source = legacy_regressor(tmp_path / "prices")
    spec = {"endpoints": [
        {"name": "serving_default", "method": "serving_default", "inputs": [
            {"city": {"shape": [None], "dtype": "string"},
             "rooms": {"shape": [None], "dtype": "float32"}}]},
        # TF Serving's Regress over the source's predict signature: parses the examples.
        {"name": "price", "method": "serving_default", "kind": "regress", "output": "price",
         "inputs": [{"tf_example": CITY_FEATURES}]},
    ]}
    result = export(launcher, source, spec, repo, name="prices")
    version = Path(result.path)
    shipped = result.manifest.source["shipped"]
    assert shipped["how"] == RESAVED and list(shipped["added"]) == ["price"]
    # The source's own `regress` signature, which the spec does not name, was called on
    # both sides too (inputs: examples with the spec's features).
    assert sorted(result.manifest.parity) == ["price", "regress", "serving_default"]
    assert sorted(result.manifest.signatures) == ["price", "regress", "serving_default"]
    assert result.manifest.signatures["price"]["method_name"] == "tensorflow/serving/regress"

    examples = np.array([example(city="pune", rooms=4.0), example(city="nowhere", rooms=8.0)],
                        dtype=object)
    got = run_with_session_loader(version, "price", {"inputs": examples})
    np.testing.assert_allclose(got["outputs"].ravel(), [2.0 + 1.0, 0.0 + 2.0])
    theirs = run_with_session_loader(source, "regress", {"inputs": examples})
    np.testing.assert_allclose(run_with_session_loader(version, "regress",
                                                       {"inputs": examples})["outputs"],
                               theirs["outputs"])


def test_tf_hubs_reusable_object_ships_whole_and_fine_tunes(launcher, tmp_path, repo):
    """TF Hub's guide example (support/hub_example.py): `__call__` served as a signature, and
    with `reusable: true` the version keeps the interface, checked in the export with TF
    Hub's client and here again as a user runs it."""
    from support.hub_example import (
        GUIDE_INPUT,
        GUIDE_LOSSES,
        GUIDE_OUTPUT,
        hub_client,
        save_hub_example,
    )

    from shipyard.exporter.reusable import has_reusable_interface
    from shipyard.exporter.whole import RESAVED

    source = save_hub_example(tmp_path / "hub-module")
    spec = {"endpoints": [{"name": "times", "method": "__call__",
                           "inputs": [{"name": "inputs", "shape": [None], "dtype": "float32"}]}],
            "reusable": True}
    result = export(launcher, source, spec, repo, name="hub")
    version = Path(result.path)
    assert result.manifest.source["shipped"]["how"] == RESAVED
    assert sorted(result.manifest.signatures) == ["serving_default", "times"]
    checked = result.manifest.verification["reusable"]  # TF Hub's client, in the export
    assert checked["trainable_weights"] == 1
    assert checked["gradient_step"] == "changed 1 of 1 trainable weights"
    np.testing.assert_allclose(checked["regularization_losses"], GUIDE_LOSSES, rtol=1e-6)
    assert has_reusable_interface(version)

    found = hub_client(version, GUIDE_INPUT)
    np.testing.assert_allclose(found["inference"], GUIDE_OUTPUT)
    assert found["trainable_weights"] == 1
    np.testing.assert_allclose(found["losses"], GUIDE_LOSSES, rtol=1e-6)
    assert found["changed"] == [True]


def test_a_source_tf_servings_loader_cannot_restore_is_re_saved_and_then_serves(
        launcher, tmp_path, repo):
    """A Keras 3 model saved with tf.saved_model.save (as a TFX Trainer module may): TF2's
    loader restores it, TF1's session loader (TF Serving's) leaves the variables its functions
    read unrestored. Copied as it is, it could not serve: shipyard re-saves it and says why."""
    import keras
    import tensorflow as tf

    from shipyard.exporter.whole import RESAVED

    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="dense")])

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(x):
        return {"y": model(x)}

    source = tmp_path / "keras3"
    tf.saved_model.save(model, str(source), signatures={"serving_default": serve})
    x = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)
    with pytest.raises(Exception, match="ReadVariableOp"):  # the source, as TF Serving sees it
        run_with_session_loader(source, "serving_default", {"x": x})

    spec = {"endpoints": [{"name": "serving_default", "method": "serving_default",
                           "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}]}
    result = export(launcher, source, spec, repo, name="keras3")
    shipped = result.manifest.source["shipped"]
    assert shipped["how"] == RESAVED
    assert shipped["resaved_because"].startswith("TF1's session loader (TF Serving's) leaves 2 "
                                                 "of the source's variables unrestored")
    got = run_with_session_loader(Path(result.path), "serving_default", {"x": x})
    np.testing.assert_allclose(got["y"], model(x).numpy(), atol=1e-6)


def test_a_graph_in_text_form_ships_as_the_same_protocol_buffer(launcher, tmp_path, repo):
    """saved_model.pbtxt, which TensorFlow's loaders read as well: the version holds it in
    binary form (saved_model.pb), and answers as the source does in TF Serving's loader."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    source = legacy_regressor(tmp_path / "prices")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((source / "saved_model.pb").read_bytes())
    (source / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
    (source / "saved_model.pb").unlink()
    spec = {"endpoints": [{"name": "serving_default", "method": "serving_default", "inputs": [
        {"city": {"shape": [None], "dtype": "string"},
         "rooms": {"shape": [None], "dtype": "float32"}}]}]}
    result = export(launcher, source, spec, repo, name="prices")
    version = Path(result.path)
    assert not (version / "saved_model.pbtxt").exists()
    written = saved_model_pb2.SavedModel()
    written.ParseFromString((version / "saved_model.pb").read_bytes())
    assert written == proto
    feeds = {"city": np.array([b"lima", b"oslo"], dtype=object),
             "rooms": np.array([2.0, 6.0], "float32")}
    np.testing.assert_allclose(
        run_with_session_loader(version, "serving_default", feeds)["price"],
        run_with_session_loader(source, "serving_default", feeds)["price"])
