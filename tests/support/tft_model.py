"""A TensorFlow Transform model, built the way a TFX pipeline's Transform and Trainer build one.

Transform: `tft_beam.AnalyzeAndTransformDataset` (Beam's DirectRunner) over a small in-memory
data set: `tft.compute_and_apply_vocabulary` over `color`, `tft.scale_to_z_score` over
`size`. Its output directory is what TFX's Transform writes: the transform graph
(`WriteTransformFn`: transform_fn/, a SavedModel whose assets/ hold the color vocabulary, and
transformed_metadata/), the raw metadata (metadata/), and the transformed examples.

Trainer: a small Keras model trained on the transformed examples, saved as TFX's taxi
template saves it (tfx/experimental/templates/taxi/models/keras_model/model.py, `run_fn` and
`_get_tf_examples_serving_signature`): the transform layer tracked on the model
(`model.tft_layer`), and `tf.saved_model.save` with a `serving_default` that takes serialized
tf.Examples (`examples`, string [None]), parses them with the raw feature spec less the label,
applies `model.tft_layer` and then the model. It returns `scores`: float32 [batch, 2], the
probabilities of label 0 and 1.

The model is a tf_keras (Keras 2) model: the template builds it with `tf.keras`, which in a
Trainer's process is Keras 2, as TensorFlow Transform requires (importing it sets
TF_USE_LEGACY_KERAS=1, and its transform layer is a tf_keras Model). It matters for serving: a
Keras 3 model saved with tf.saved_model.save does not load in TF1's session loader, which TF
Serving and saved_model_cli use (its variables are not restored: "Could not find variable
dense/kernel"); a Keras 2 one does.

Importing this module imports TensorFlow; building the model imports Beam, TensorFlow
Transform and tf_keras: integration tests only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

LABEL = "label"
# Each color's share of the data set, in decreasing frequency: TensorFlow Transform orders a
# vocabulary by frequency, so the vocabulary file lists them in this order.
COLOR_COUNTS = {"red": 20, "green": 16, "blue": 12, "yellow": 7, "purple": 5}
RAW_FEATURE_SPEC = {"color": tf.io.FixedLenFeature([], tf.string),
                    "size": tf.io.FixedLenFeature([], tf.float32),
                    LABEL: tf.io.FixedLenFeature([], tf.int64)}
# The serving examples' features as an export spec's tf_example declares them.
TF_EXAMPLE_FEATURES = {"color": {"shape": [], "dtype": "string"},
                       "size": {"shape": [], "dtype": "float32"}}
CLASSES = ("0", "1")  # the label's values, in the order of the scores' columns
VOCABULARY_NAME = "color"  # the vocabulary's file name in the transform graph's assets/
OUT_OF_VOCABULARY = "orange"  # a color the data set does not have
# The Trainer's serving_default shipped as it is, and TF Serving's Classify over it (added).
TFT_SPEC = {"endpoints": [
    {"name": "serving_default", "method": "serving_default",
     "inputs": [{"name": "examples", "tf_example": TF_EXAMPLE_FEATURES}]},
    {"name": "classify", "method": "serving_default", "kind": "classify",
     "inputs": [{"tf_example": TF_EXAMPLE_FEATURES}], "output": "scores",
     "classes": list(CLASSES)}]}


@dataclasses.dataclass(frozen=True)
class TftModel:
    path: Path  # the Trainer's SavedModel: serving_default(examples) -> {"scores": [n, 2]}
    transform_output: Path  # TensorFlow Transform's output (tft.TFTransformOutput reads it)
    raw_feature_spec: dict[str, tf.io.FixedLenFeature]  # what serving parses (no label)
    vocabulary: tuple[str, ...]  # the color vocabulary file's words, in its order
    examples: tuple[bytes, ...]  # serialized tf.Examples: each vocabulary color, then one not
    scores: np.ndarray  # the Trainer's model's scores for `examples`, float32 [n, 2]


def build_tft_model(root: Path, *, rows: int = 60, seed: int = 0) -> TftModel:
    """Runs Transform and the Trainer under `root` (transform/, transformed/, model/, tmp/);
    `rows` examples, the colors in COLOR_COUNTS' proportions."""
    _import_tensorflow_transform()
    import tensorflow_transform as tft
    import tf_keras

    transform_output = root / "transform"
    records = _transform(_raw_rows(rows, seed), transform_output, root)
    tft_output = tft.TFTransformOutput(str(transform_output))
    transformed = tf.io.parse_example(records, tft_output.transformed_feature_spec())

    tf_keras.utils.set_random_seed(seed)
    model = _keras_model(tft_output.vocabulary_size_by_name(VOCABULARY_NAME))
    model.fit({name: transformed[name].numpy() for name in ("color_xf", "size_xf")},
              transformed[LABEL].numpy(), epochs=10, batch_size=16, verbose=0)

    raw_feature_spec = tft_output.raw_feature_spec()
    raw_feature_spec.pop(LABEL)  # labels are not in serving requests
    serve = _serve_tf_examples_fn(model, tft_output, raw_feature_spec)
    path = root / "model"
    tf.saved_model.save(model, str(path), signatures={"serving_default": serve})

    vocabulary_file = tft_output.vocabulary_file_by_name(VOCABULARY_NAME)
    vocabulary = tuple(Path(vocabulary_file).read_text().splitlines())
    examples = tuple(_example(color, size) for color, size in zip(
        (*vocabulary, OUT_OF_VOCABULARY), np.linspace(2.0, 8.0, len(vocabulary) + 1)))
    scores = serve(tf.constant(examples))["scores"].numpy()
    return TftModel(path, transform_output, raw_feature_spec, vocabulary, examples, scores)


def _import_tensorflow_transform() -> None:
    """Imports TensorFlow Transform without leaving TF_USE_LEGACY_KERAS=1 (which its import
    sets) to the rest of the test process and the processes it starts later (verifiers, TF
    Serving doubles): they run Keras 3 where the variable is unset. Transform has chosen
    tf_keras by then."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_transform  # noqa: F401

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)


def _raw_rows(rows: int, seed: int) -> list[dict[str, object]]:
    """Colors in COLOR_COUNTS' proportions (each at least once), sizes around 5; the label
    depends on both, so the model needs the vocabulary and the z-score."""
    rng = np.random.default_rng(seed)
    total = sum(COLOR_COUNTS.values())
    colors = [color for color, count in COLOR_COUNTS.items()
              for _ in range(max(1, round(count * rows / total)))][:rows]
    effect = {"red": 1.5, "green": 0.5, "blue": -0.5, "yellow": -1.5, "purple": 0.0}
    result = []
    for color in rng.permutation(colors):
        size = float(rng.normal(5.0, 2.0))
        result.append({"color": str(color), "size": size,
                       LABEL: int(effect[color] + (size - 5.0) / 2.0 > 0)})
    return result


def _transform(raw_rows: list[dict[str, object]], transform_output: Path,
               root: Path) -> list[bytes]:
    """TFX's Transform: analyze and transform, write the transform graph, the raw metadata and
    the transformed examples; returns those examples."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    def preprocessing_fn(inputs):
        return {"color_xf": tft.compute_and_apply_vocabulary(
                    inputs["color"], num_oov_buckets=1, vocab_filename=VOCABULARY_NAME),
                "size_xf": tft.scale_to_z_score(inputs["size"]),
                LABEL: inputs[LABEL]}

    raw_metadata = dataset_metadata.DatasetMetadata.from_feature_spec(RAW_FEATURE_SPEC)
    transformed_prefix = root / "transformed" / "examples"
    # Options of their own: Beam would otherwise parse the test process's command line.
    with beam.Pipeline(runner="DirectRunner", options=PipelineOptions([])) as pipeline:
        with tft_beam.Context(temp_dir=str(root / "tmp")):
            raw = pipeline | "Rows" >> beam.Create(raw_rows)
            (transformed, transformed_metadata), transform_fn = (
                (raw, raw_metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))
            _ = transform_fn | tft_beam.WriteTransformFn(str(transform_output))
            coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
            _ = (transformed | "Encode" >> beam.Map(coder.encode)
                 | "Write" >> beam.io.WriteToTFRecord(str(transformed_prefix)))
    metadata_io.write_metadata(raw_metadata, str(
        transform_output / tft.TFTransformOutput.RAW_METADATA_DIR))
    files = sorted(str(p) for p in transformed_prefix.parent.iterdir())
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _keras_model(vocabulary_size: int):
    import tf_keras as keras

    color = keras.Input(shape=(), dtype="int64", name="color_xf")
    size = keras.Input(shape=(), dtype="float32", name="size_xf")
    # One column per vocabulary word and one for the OOV bucket (num_oov_buckets=1).
    one_hot = keras.layers.CategoryEncoding(vocabulary_size + 1, output_mode="one_hot")(color)
    hidden = keras.layers.Dense(8, activation="relu")(
        keras.layers.Concatenate()([one_hot, keras.layers.Reshape((1,))(size)]))
    scores = keras.layers.Dense(len(CLASSES), activation="softmax")(hidden)
    model = keras.Model({"color_xf": color, "size_xf": size}, scores)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss="sparse_categorical_crossentropy")
    return model


def _serve_tf_examples_fn(model, tft_output, raw_feature_spec):
    # Tracked on the model so that tf.saved_model.save keeps the transform graph and its
    # vocabulary (the template's comment: "We need to track the layers in the model").
    model.tft_layer = tft_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string,
                                                 name="examples")])
    def serve_tf_examples_fn(serialized_tf_examples):
        raw_features = tf.io.parse_example(serialized_tf_examples, raw_feature_spec)
        transformed = model.tft_layer(raw_features)
        return {"scores": model({"color_xf": transformed["color_xf"],
                                 "size_xf": transformed["size_xf"]})}

    return serve_tf_examples_fn


def _example(color: str, size: float) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "color": tf.train.Feature(bytes_list=tf.train.BytesList(value=[color.encode()])),
        "size": tf.train.Feature(float_list=tf.train.FloatList(value=[size])),
    })).SerializeToString()
