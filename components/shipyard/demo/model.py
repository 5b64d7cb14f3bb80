"""The demo's model: dict inputs with a StringLookup, two named outputs, trained briefly; and
the demo's data, as rows (CSV for ExampleGen, tf.Examples for validation)."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shipyard.demo.spec import DEMO_CLASSES

COLORS = list(DEMO_CLASSES)
# The demo data's columns: CsvExampleGen makes one scalar feature per CSV column (it has no
# multivalent columns), so the model's `x1` [3] arrives as x1_0..x1_2.
FEATURE_COLUMNS = ("x1_0", "x1_1", "x1_2", "color")
LABEL_COLUMNS = ("label_score", "label_class")


def build_demo_model() -> keras.Model:
    # Every layer is named: Keras numbers unnamed layers per process (dense, dense_1, ...), and
    # a second model built in the same process would otherwise differ in its config.
    x1 = keras.Input((3,), name="x1")
    color = keras.Input((1,), dtype="string", name="color")
    one_hot = keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot",
                                        name="color_lookup")(color)
    hidden = keras.layers.Concatenate(name="features")(
        [x1, keras.layers.Flatten(name="color_one_hot")(one_hot)])
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model({"x1": x1, "color": color}, {"score": score, "probs": probs},
                        name="demo_model")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01, name="adam"),
                  loss={"score": "mse", "probs": "sparse_categorical_crossentropy"})
    return model


def train_demo_model(path: Path, *, seed: int = 0, samples: int = 512,
                     epochs: int = 10) -> Path:
    """Trains on `samples` examples drawn with `seed`, from weights drawn with `seed`: the
    same seed gives the same weights here, so a re-run exports the same content. Different
    seeds give models that agree on the color class (what `probs` learns) but not exactly on
    `score`: what a retrained challenger looks like. (The KFP reference pipeline ships this
    .keras file; the TFX one trains through shipyard.demo.trainer_module.)"""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((samples, 3)).astype("float32")
    color_ids = rng.integers(0, len(COLORS), size=samples)
    # Keras' numpy adapter rejects string arrays; a tf.Tensor of strings is accepted.
    color = tf.constant([[COLORS[i]] for i in color_ids])
    targets = {"score": x1.sum(axis=1, keepdims=True), "probs": color_ids}
    model = build_demo_model()
    model.fit({"x1": x1, "color": color}, targets, epochs=epochs, batch_size=32, verbose=0,
              shuffle=False)
    model.save(path)
    return path


def demo_rows(count: int, *, seed: int) -> list[dict[str, float | int | str]]:
    """`count` rows of the demo data drawn with `seed`: features x1_0..x1_2 (standard normal)
    and color, labels label_score (the sum of x1, what `score` learns) and label_class (the
    color's index, what `probs` learns)."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((count, 3)).astype("float32")
    colors = rng.integers(0, len(COLORS), size=count)
    return [{"x1_0": float(row[0]), "x1_1": float(row[1]), "x1_2": float(row[2]),
             "color": COLORS[c], "label_score": float(row.sum()), "label_class": int(c)}
            for row, c in zip(x1, colors)]


def write_demo_csv(path: Path, *, seed: int, count: int = 768) -> Path:
    """The demo's training data as CSV with a header, for CsvExampleGen. Same seed, same
    bytes: ExampleGen then makes the same examples and the Trainer the same weights. 768 rows
    leave about 512 in ExampleGen's train split (2 of 3 hash buckets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FEATURE_COLUMNS, *LABEL_COLUMNS])
        writer.writeheader()
        for row in demo_rows(count, seed=seed):
            # repr keeps every float a float to CsvExampleGen's type inference ("1.0", never
            # "1", which would make an int64 column of a lucky one).
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    staging.replace(path)
    return path


def to_tf_example(row: dict[str, float | int | str]) -> tf.train.Example:
    """A demo row as CsvExampleGen would make it: floats, int64s and bytes, one value each."""
    feature = {}
    for name, value in row.items():
        if isinstance(value, str):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        elif isinstance(value, int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_demo_tfrecord(path: Path, rows: list[dict[str, float | int | str]]) -> Path:
    """Rows as a gzipped TFRecord of tf.Examples, the format ExampleGen writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for row in rows:
            writer.write(to_tf_example(row).SerializeToString(deterministic=True))
    return path


def sample_examples(count: int, *, seed: int = 1000) -> list[dict[str, float | int | str]]:
    """Rows shaped like the training data, labels left out (the offline canary's sample
    traffic)."""
    return [{k: row[k] for k in FEATURE_COLUMNS} for row in demo_rows(count, seed=seed)]
