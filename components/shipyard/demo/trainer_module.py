"""The demo's Trainer module file: TFX's Trainer contract, `run_fn(fn_args)`.

Written the way TFX's templates write theirs (tfx/experimental/templates/penguin/models/
model.py, taxi/models/keras_model/model.py) without Transform or a schema: a fixed feature
spec, training on the gzipped TFRecords of ExampleGen's splits (`fn_args.train_files`,
`fn_args.eval_files`), and a SavedModel in `fn_args.serving_model_dir` whose `serving_default`
takes serialized tf.Examples (`examples`, string [None]) and parses them with
tf.io.parse_example, as the templates' `serve_tf_examples_fn` does. The model is the demo
model (shipyard.demo.model): dict inputs x1 [3] and color, outputs score and probs.

TFX's own Trainer runs this file where TFDV is installed; elsewhere shipyard's ModuleTrainer
(shipyard.tfx.trainer) calls the same `run_fn` with TFX's own FnArgs.

`fn_args.custom_config`: `seed` (weights and data order; default 0) and `epochs` (default 10),
used when `train_args.num_steps` is not set.
"""

import keras
import numpy as np
import tensorflow as tf

from shipyard.demo.model import build_demo_model
from shipyard.demo.spec import DEMO_FEATURES

# What the serving signature parses: the export spec's tf_example declares the same features
# (shipyard.demo.spec.DEMO_FEATURES), so shipyard can build valid examples for verification.
FEATURE_SPEC = {
    name: tf.io.FixedLenFeature(decl["shape"], tf.as_dtype(decl["dtype"]),
                                default_value=decl.get("default"))
    for name, decl in DEMO_FEATURES.items()
}
# Labels are in the training examples only: serving examples need not carry them.
LABEL_SPEC = {"label_score": tf.io.FixedLenFeature([1], tf.float32),
              "label_class": tf.io.FixedLenFeature([1], tf.int64)}
BATCH_SIZE = 32
EPOCHS = 10


def model_inputs(features):
    """Parsed features -> the Keras model's inputs (CSV columns x1_0..x1_2 make its x1)."""
    return {"x1": tf.concat([features["x1_0"], features["x1_1"], features["x1_2"]], axis=1),
            "color": features["color"]}


def _load(file_patterns, seed):
    """All examples of the files, parsed: (model inputs, targets) as tensors. The demo data is
    small enough to hold in memory, which keeps training deterministic: Keras' fit over a
    tf.data pipeline gave different weights from one run to the next on a busy machine, over
    in-memory tensors it gives the same."""
    files = sorted({f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"no example files match {list(file_patterns)}")
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    if not records:
        raise ValueError(f"the example files {files} hold no records")
    # ExampleGen's Beam shards promise no record order, and SGD's result depends on it: a
    # fixed order (sorted, then permuted with the seed) makes the same examples give the same
    # weights, so a re-run of the pipeline exports the same content (and shipyard reuses the
    # version). Sorted by the examples' deterministic serialization: protobuf writes a map's
    # entries (the features) in an order that varies between processes, so the same example
    # comes as different bytes.
    records.sort(key=lambda r: tf.train.Example.FromString(r).SerializeToString(
        deterministic=True))
    order = np.random.default_rng(seed).permutation(len(records))
    parsed = tf.io.parse_example(tf.constant([records[i] for i in order]),
                                 {**FEATURE_SPEC, **LABEL_SPEC})
    inputs = model_inputs(parsed)
    # numpy where Keras takes it (its numpy adapter rejects strings: color stays a tensor).
    return ({"x1": inputs["x1"].numpy(), "color": inputs["color"]},
            {"score": parsed["label_score"].numpy(),
             "probs": parsed["label_class"].numpy()[:, 0]})


def _serve_tf_examples_fn(model):
    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string,
                                                 name="examples")])
    def serve_tf_examples_fn(examples):
        """Serialized tf.Examples -> the model's outputs (score, probs)."""
        features = tf.io.parse_example(examples, FEATURE_SPEC)
        return model(model_inputs(features), training=False)

    return serve_tf_examples_fn


def export_serving_model(model, serving_model_dir):
    """The SavedModel TFX's Pusher (and shipyard) takes. Keras 3 has no
    `model.save(dir, save_format="tf", signatures=...)` as the templates call it; under the
    TensorFlow backend a Keras model is a trackable object, and tf.saved_model.save writes the
    same SavedModel (its StringLookup table included). Not keras.export.ExportArchive: it lists
    the variables in an order that varies between processes, so two identical trainings would
    write different saved_model.pb files (and shipyard would see new content)."""
    tf.saved_model.save(model, serving_model_dir,
                        signatures={"serving_default": _serve_tf_examples_fn(model)})


def run_fn(fn_args):
    """TFX's Trainer entry point: train on fn_args.train_files, export to
    fn_args.serving_model_dir."""
    config = fn_args.custom_config or {}
    seed = int(config.get("seed", 0))
    keras.utils.set_random_seed(seed)
    x, y = _load(fn_args.train_files, seed)
    evaluation = _load(fn_args.eval_files, seed)
    model = build_demo_model()
    if fn_args.train_steps:  # train_args.num_steps: the Trainer's step budget, in batches
        epochs = -(-fn_args.train_steps * BATCH_SIZE // len(y["score"]))
    else:
        epochs = int(config.get("epochs", EPOCHS))
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, validation_data=evaluation,
              shuffle=False, verbose=0)  # _load ordered the examples, with the seed
    export_serving_model(model, fn_args.serving_model_dir)
