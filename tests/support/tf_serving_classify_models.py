"""The SavedModel the Classify/Regress tests of the TF Serving double use, and the warmup and
serving-runtime-check tests too: one signature per case of classifier.cc's and regressor.cc's
checks (tests/integration/test_tf_serving_double_classify.py, test_tf_serving_warmup.py,
test_runtime_check.py). TensorFlow is imported inside the builder."""

from __future__ import annotations

from pathlib import Path

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"

# signature key -> the method name written into saved_model.pb. TF2's tf.saved_model.save
# writes PREDICT for every signature; the method name is SignatureDef metadata (the graph is
# the same), so setting it in saved_model.pb is what a TF1 exporter would have written.
METHODS = {
    "serving_default": CLASSIFY, "scores_only": CLASSIFY, "classes_only": CLASSIFY,
    "regress": REGRESS, "regress_column": REGRESS,
    "native_tf2": PREDICT,  # classify-shaped, left as TF2 writes it
    "predict": PREDICT, "custom_method": "example.com/custom",
    "wrong_input_alias": CLASSIFY, "wrong_output_aliases": CLASSIFY, "three_outputs": CLASSIFY,
    "two_inputs": CLASSIFY, "scores_rank1": CLASSIFY, "scores_float64": CLASSIFY,
    "classes_int64": CLASSIFY, "scores_first_row": CLASSIFY, "columns_mismatch": CLASSIFY,
    "regress_two_columns": REGRESS, "regress_first_row": REGRESS, "regress_int32": REGRESS,
    "regress_two_outputs": REGRESS, "regress_wrong_output": REGRESS,
    "regress_float_input": REGRESS, "long_output_alias": CLASSIFY,
}
LONG_ALIAS = "probabilities_" + "p" * 1100  # makes the signature dump in the error > 1024 bytes


def build_classify_model(path: Path) -> None:
    """One SavedModel, one signature per case. Every example-fed signature parses
    {x: float[2], offset: float (default 0)} and works on x + offset, so a test can tell which
    values reached the model (and that a context's features merged into each example)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    features = {"x": tf.io.FixedLenFeature([2], tf.float32),
                "offset": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)}
    examples = tf.TensorSpec([None], tf.string)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, features)
        return parsed["x"] + parsed["offset"][:, None]

    def labels(x):
        return tf.tile(tf.constant([[b"neg", b"pos"]]), [tf.shape(x)[0], 1])

    def regression(x):
        return x[:, 0] + 10.0 * x[:, 1]

    def classify(inputs):
        x = parse(inputs)
        return {"classes": labels(x), "scores": x}

    def fn(body, spec=examples):
        return tf.function(body, input_signature=[spec])

    predict = tf.function(lambda x: {"y": x * 2.0},
                          input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    signatures = {
        "serving_default": fn(classify),
        "native_tf2": fn(classify),
        "scores_only": fn(lambda inputs: {"scores": parse(inputs)}),
        "classes_only": fn(lambda inputs: {"classes": labels(parse(inputs))}),
        "regress": fn(lambda inputs: {"outputs": regression(parse(inputs))}),
        "regress_column": fn(lambda inputs: {"outputs": regression(parse(inputs))[:, None]}),
        "predict": predict,
        "custom_method": predict,
        "wrong_input_alias": fn(lambda examples: classify(examples)),
        "wrong_output_aliases": fn(lambda inputs: {"probabilities": parse(inputs)}),
        "three_outputs": fn(lambda inputs: {**classify(inputs), "extra": parse(inputs)}),
        "two_inputs": tf.function(lambda inputs, more: classify(inputs),
                                  input_signature=[examples, examples]),
        "scores_rank1": fn(lambda inputs: {"scores": parse(inputs)[:, 0]}),
        "scores_float64": fn(lambda inputs: {"scores": tf.cast(parse(inputs), tf.float64)}),
        "classes_int64": fn(lambda inputs: {"classes": tf.cast(parse(inputs), tf.int64)}),
        "scores_first_row": fn(lambda inputs: {"scores": parse(inputs)[:1]}),
        "columns_mismatch": fn(lambda inputs: {
            "classes": labels(parse(inputs)),
            "scores": tf.concat([parse(inputs), parse(inputs)[:, :1]], axis=1)}),
        "regress_two_columns": fn(lambda inputs: {"outputs": parse(inputs)}),
        "regress_first_row": fn(lambda inputs: {"outputs": regression(parse(inputs))[:1]}),
        "regress_int32": fn(lambda inputs: {
            "outputs": tf.cast(regression(parse(inputs)), tf.int32)}),
        "regress_two_outputs": fn(lambda inputs: {"outputs": regression(parse(inputs)),
                                                  "extra": regression(parse(inputs))}),
        "regress_wrong_output": fn(lambda inputs: {"y": regression(parse(inputs))}),
        "regress_float_input": fn(lambda inputs: {"outputs": inputs * 2.0},
                                  tf.TensorSpec([None], tf.float32)),
        "long_output_alias": fn(lambda inputs: {LONG_ALIAS: parse(inputs)}),
    }
    assert set(signatures) == set(METHODS)
    tf.saved_model.save(tf.Module(), str(path), signatures=signatures)

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for key, method in METHODS.items():  # (__saved_model_init_op, TF's own, stays)
        saved_model.meta_graphs[0].signature_def[key].method_name = method
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
