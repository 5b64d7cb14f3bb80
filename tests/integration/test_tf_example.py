"""Serialized tf.Example inputs (`tf_example`) and TF Serving's Classify/Regress signatures
(`kind: classify|regress`), end to end on real TensorFlow: the export parses (Keras source) or
passes on (SavedModel source, as TFX's Trainer writes it) valid generated or real examples, the
SignatureDefs carry TF Serving's method names, warmup records are of the matching kind, and the
TF Serving test double answers Classify through the official stubs like the original model."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from support.exports import export, read_warmup
from support.specs import COLORS, FEATURES, kinds_spec

from shipyard.core.errors import SpecError

# ---- Keras source: shipyard parses the examples -------------------------------------------------


@pytest.fixture(scope="module")
def kinds_version(launcher, models, tmp_path_factory):
    repo = tmp_path_factory.mktemp("kinds-repo")
    return export(launcher, models.path("functional"), kinds_spec(), repo, name="kinds")


def test_signatures_carry_tf_servings_method_names_and_shapes(kinds_version):
    from shipyard.exporter.archive import read_signatures

    signatures = read_signatures(Path(kinds_version.path))
    assert {n: s["method_name"] for n, s in signatures.items()} == {
        "serve": "tensorflow/serving/predict", "classify": "tensorflow/serving/classify",
        "regress": "tensorflow/serving/regress",
        "serving_default": "tensorflow/serving/classify"}  # the default endpoint's kind
    classify = signatures["classify"]
    assert classify["inputs"] == {"inputs": {"dtype": "string", "shape": [None]}}
    assert classify["outputs"] == {"classes": {"dtype": "string", "shape": [None, 3]},
                                   "scores": {"dtype": "float32", "shape": [None, 3]}}
    assert signatures["regress"]["outputs"] == {"outputs": {"dtype": "float32",
                                                            "shape": [None, 1]}}
    assert signatures["serve"]["inputs"] == {"examples": {"dtype": "string", "shape": [None]}}
    assert sorted(signatures["serve"]["outputs"]) == ["probs", "score"]


def test_warmup_records_are_of_the_endpoints_kind_and_carry_valid_examples(kinds_version):
    from tensorflow.core.example import example_pb2

    logs = read_warmup(kinds_version.path)
    kinds = [(log.WhichOneof("log_type"),
              getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name)
             for log in logs]
    assert kinds == [("predict_log", "serve")] * 2 + [("classify_log", "classify")] * 2 + [
        ("regress_log", "regress")] * 2 + [("classify_log", "serving_default")]
    batches = [log.classify_log.request.input.example_list.examples for log in logs
               if log.HasField("classify_log")]
    assert [len(examples) for examples in batches] == [1, 4, 1]
    for example in (e for examples in batches for e in examples):
        assert len(example.features.feature["x1"].float_list.value) == 3
    # Colors from the vocabulary, but in the last example of a batch of several: outside it.
    assert [[e.features.feature["color"].bytes_list.value[0].decode() in COLORS
             for e in examples] for examples in batches] == [
        [True], [True, True, True, False], [True]]
    serialized = logs[0].predict_log.request.inputs["examples"].string_val[0]
    assert example_pb2.Example.FromString(serialized).features.feature["x1"].float_list.value


def test_tf_serving_classifies_and_regresses_like_the_original_model(kinds_version, models,
                                                                     tmp_path):
    """Served by the TF Serving double (the session loader, classifier.cc's checks) and asked
    through the official stubs, with the method-name check on as strict servers run it."""
    import grpc
    import keras
    import tensorflow as tf
    from support.tf_serving_double import TFServingDouble, wait_for_state
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    from shipyard.serving.config import ModelServing, parse_config, with_model

    features = {"x1": [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], "color": [["red"], ["blue"]]}
    examples = []
    for x1, (color,) in zip(features["x1"], features["color"]):
        example = example_pb2.Example()
        example.features.feature["x1"].float_list.value.extend(x1)
        example.features.feature["color"].bytes_list.value.append(color.encode())
        examples.append(example)
    original = keras.saving.load_model(models.path("functional"))(
        {"x1": tf.constant(features["x1"]), "color": tf.constant(features["color"])})

    base = str(Path(kinds_version.path).parent)
    config = with_model(parse_config(""), "kinds", base, ModelServing((1,), {}))
    with TFServingDouble(enable_signature_method_name_check=True) as server:
        server.reload(config)
        wait_for_state(server, "kinds", 1)
        channel = grpc.insecure_channel(server.address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "kinds"  # no signature_name: serving_default classifies
        request.input.example_list.examples.extend(examples)
        answer = stub.Classify(request, timeout=30)
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name, regress.model_spec.signature_name = "kinds", "regress"
        regress.input.example_list.examples.extend(examples)
        values = stub.Regress(regress, timeout=30)
        channel.close()

    for row, classification in enumerate(answer.result.classifications):
        assert [c.label for c in classification.classes] == list(COLORS)
        np.testing.assert_allclose([c.score for c in classification.classes],
                                   original["probs"][row], atol=1e-5)
    np.testing.assert_allclose([r.value for r in values.result.regressions],
                               np.asarray(original["score"]).ravel(), atol=1e-5)


# ---- SavedModel source: TFX's Trainer model, which parses the examples itself --------------------

@pytest.fixture(scope="module")
def trainer_model(models, tmp_path_factory) -> Path:
    """A SavedModel whose serving_default takes serialized tf.Examples (`examples`, string
    [None]) and parses them with tf.io.parse_example, as TFX templates' serve_tf_examples_fn."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(models.path("functional"))
    spec = {"x1": tf.io.FixedLenFeature([3], tf.float32),
            "color": tf.io.FixedLenFeature([1], tf.string, default_value="")}

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_tf_examples_fn(self, serialized):
            return self.model(tf.io.parse_example(serialized, spec))

    module = Serving()
    target = tmp_path_factory.mktemp("trainer") / "Format-Serving"
    tf.saved_model.save(module, str(target),
                        signatures={"serving_default": module.serve_tf_examples_fn})
    return target


def write_tfrecords(directory: Path, records: list[bytes]) -> Path:
    """ExampleGen's layout: Split-eval/data_tfrecord-00000-of-00001.gz (gzipped TFRecord)."""
    split = directory / "Split-eval"
    split.mkdir(parents=True)
    with gzip.open(split / "data_tfrecord-00000-of-00001.gz", "wb") as stream:
        for record in records:
            # TFRecord framing; the CRCs are zero here (TensorFlow's readers check them, ours
            # does not, and this file is only read by shipyard).
            stream.write(struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4)
    return split


def trainer_spec() -> dict:

    return {"endpoints": [
        {"name": "serve", "method": "serving_default",
         "inputs": [{"name": "examples", "tf_example": FEATURES}]},
        {"name": "classify", "kind": "classify", "method": "serving_default", "output": "probs",
         "classes": list(COLORS), "inputs": [{"tf_example": FEATURES}]},
    ]}


def test_a_trainer_saved_model_is_verified_on_real_examples(launcher, trainer_model, repo,
                                                            tmp_path):
    from tensorflow.core.example import example_pb2

    from shipyard.core.manifest import read_manifest

    records = []
    for i, color in enumerate(["red", "green", "blue", "red", "green"]):
        example = example_pb2.Example()
        example.features.feature["x1"].float_list.value.extend([i, -i, 0.5 * i])
        example.features.feature["color"].bytes_list.value.append(color.encode())
        records.append(example.SerializeToString())
    split = write_tfrecords(tmp_path / "examples", records)

    result = export(launcher, trainer_model, trainer_spec(), repo, name="trainer",
                    examples=str(split))
    manifest = read_manifest(Path(result.path))
    # Generated batches (1, 4), then the real ones (1, all 5): parity on the same bytes.
    assert manifest.parity["classify"]["batch_sizes"] == [1, 4, 5]
    assert manifest.parity["classify"]["max_abs_error"] <= 1e-5
    # Real examples stay out of the warmup file unless asked for.
    assert len(read_warmup(result.path)) == 5 and manifest.warmup_records == 5
    warmed = export(launcher, trainer_model, trainer_spec(), repo, name="warmed",
                    examples=str(split), warmup_from_examples=True)
    logs = read_warmup(warmed.path)
    assert len(logs) == 9
    batches = [list(log.predict_log.request.inputs["examples"].string_val) for log in logs
               if log.HasField("predict_log")]
    assert records in batches and records[:1] in batches  # the real batches, byte for byte


def test_a_string_input_the_model_parses_gets_the_advice_to_declare_tf_example(
        launcher, trainer_model, repo):
    spec = {"endpoints": [{"name": "serve", "method": "serving_default",
                           "inputs": [{"name": "examples", "shape": [None], "dtype": "string"}]}]}
    with pytest.raises(SpecError, match=r"endpoint 'serve': the original model fails on inputs "
                                        r"generated from the declared signature.*Input\(s\) "
                                        r"\['examples'\] look like serialized tf.Examples the "
                                        r"model parses: declare them with `tf_example"):
        export(launcher, trainer_model, spec, repo, name="strings")


def test_examples_that_are_not_tfrecords_are_refused_naming_the_file(launcher, trainer_model,
                                                                     repo, tmp_path):
    from shipyard.core.errors import UsageError

    bad = tmp_path / "rows.csv"
    bad.write_text("x1,color\n1,red\n")
    with pytest.raises(UsageError, match=rf"^examples: {bad} is not a complete TFRecord file"):
        export(launcher, trainer_model, trainer_spec(), repo, name="bad", examples=str(bad))
    with pytest.raises(UsageError, match=r"^examples .*nowhere: no such file, directory or "
                                         r"match"):
        export(launcher, trainer_model, trainer_spec(), repo, name="bad",
               examples=str(tmp_path / "nowhere"))
