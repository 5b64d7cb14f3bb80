"""TF1 SavedModels built the classic way (placeholders, lookup tables, SavedModelBuilder with an
init op), as a large share of the models serving in production were: the sources that must
ship whole (issue 23).

`fruit_model` has two tables: one from constant keys (KeyValueTensorInitializer), one from a
vocabulary asset file (TextFileInitializer, the file travels in assets/); both are filled only
by the SavedModel's main_op. It serves a predict signature over raw tensors and TF Serving's
classify contract over serialized tf.Examples. `legacy_regressor` uses legacy_init_op and a
regress signature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FRUITS = ("apple", "banana", "cherry", "damson")
SIZES = ("small", "medium", "large")
LABELS = ("keep", "return")


def _session_save(directory: Path, build, init_argument: str) -> None:
    """Saves what `build(tf)` makes ({name: SignatureDef}, init op) with SavedModelBuilder,
    the init op given as `init_argument` (main_op or legacy_init_op)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        signatures, init_op = build(tf)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(tf.compat.v1.tables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(directory))
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map=signatures,
                # Vocabulary files the tables read (TextFileInitializer lists its file here):
                # copied into assets/, the graph then reads them from there.
                assets_collection=tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
                **{init_argument: init_op})
            builder.save()


def fruit_model(directory: Path) -> Path:
    """Signatures: serving_default (predict: fruit [N] string, size [N] string, weights [N, 2]
    float -> score [N, 2], fruit_id [N] int64) and classify (serialized examples with the same
    features -> classes, scores); main_op = tables_initializer."""
    vocabulary = directory.parent / f"{directory.name}-sizes.txt"
    vocabulary.write_text("".join(f"{size}\n" for size in SIZES))

    def build(tf):
        fruits = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(FRUITS)), tf.range(len(FRUITS), dtype=tf.int64)), -1)
        sizes = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER), -1)
        embedding = tf.compat.v1.get_variable("embedding", initializer=tf.constant(
            np.linspace(-1, 1, 2 * (len(FRUITS) + 1), dtype="float32").reshape(-1, 2)))
        scale = tf.compat.v1.get_variable("scale", initializer=tf.constant([0.5, -1.5, 2.0]))

        def score(fruit, size, weights):
            fruit_id = fruits.lookup(fruit)
            row = tf.where(fruit_id < 0, tf.constant(len(FRUITS), tf.int64), fruit_id)
            size_id = sizes.lookup(size)
            size_scale = tf.gather(scale, tf.where(size_id < 0, tf.constant(0, tf.int64),
                                                   size_id))
            return tf.gather(embedding, row) * size_scale[:, None] + weights, fruit_id

        fruit = tf.compat.v1.placeholder(tf.string, [None], name="fruit")
        size = tf.compat.v1.placeholder(tf.string, [None], name="size")
        weights = tf.compat.v1.placeholder(tf.float32, [None, 2], name="weights")
        scores, fruit_id = score(fruit, size, weights)
        predict = tf.compat.v1.saved_model.predict_signature_def(
            {"fruit": fruit, "size": size, "weights": weights},
            {"score": scores, "fruit_id": fruit_id})

        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(serialized, {
            "fruit": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "size": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "weights": tf.io.FixedLenFeature([2], tf.float32)})
        example_scores, _ = score(parsed["fruit"], parsed["size"], parsed["weights"])
        probabilities = tf.nn.softmax(example_scores)
        classes = tf.tile(tf.constant([list(LABELS)]), tf.stack([tf.shape(serialized)[0], 1]))
        classify = tf.compat.v1.saved_model.classification_signature_def(
            serialized, classes, probabilities)
        return {"serving_default": predict, "classify": classify}, \
            tf.compat.v1.tables_initializer()

    _session_save(directory, build, "main_op")
    vocabulary.unlink()  # the SavedModel holds its own copy in assets/
    return directory


def legacy_regressor(directory: Path) -> Path:
    """One regress signature (`regress`: serialized examples with `city` string and `rooms`
    float -> outputs [N, 1]) and serving_default predicting from raw tensors; the table is
    filled by legacy_init_op."""

    def build(tf):
        cities = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(["oslo", "lima", "pune"]), tf.constant([3.0, 1.0, 2.0])), 0.0)
        slope = tf.compat.v1.get_variable("slope", initializer=tf.constant(0.25))

        def price(city, rooms):
            return cities.lookup(city) + slope * rooms

        city = tf.compat.v1.placeholder(tf.string, [None], name="city")
        rooms = tf.compat.v1.placeholder(tf.float32, [None], name="rooms")
        predict = tf.compat.v1.saved_model.predict_signature_def(
            {"city": city, "rooms": rooms}, {"price": price(city, rooms)})
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        parsed = tf.io.parse_example(serialized, {
            "city": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "rooms": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})
        regress = tf.compat.v1.saved_model.regression_signature_def(
            serialized, price(parsed["city"], parsed["rooms"])[:, None])
        return {"serving_default": predict, "regress": regress}, \
            tf.group(tf.compat.v1.tables_initializer(), name="legacy_init_op")

    _session_save(directory, build, "legacy_init_op")
    return directory


def run_with_session_loader(directory: Path, signature: str,
                            feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What TF Serving does: TF1's session loader, tags {serve}, fed and fetched by the
    SignatureDef's tensor names."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(directory))
        definition = meta_graph.signature_def[signature]
        return session.run({k: v.name for k, v in definition.outputs.items()},
                           {definition.inputs[k].name: v for k, v in feeds.items()})
