"""The keys of a SavedModel's lookup tables, read from its files
(shipyard.exporter.saved_model_vocabulary), on SavedModels built the ways TensorFlow's guides
build them: a TF1 graph saved with SavedModelBuilder, TF2 modules saved with
tf.saved_model.save, a Keras export, and a TensorFlow Transform Trainer's model; and the
samples generated for a SavedModel source, which draw from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.core.errors import ModelLoadError
from shipyard.exporter.saved_model_vocabulary import MAX_KEYS, read_vocabularies, table_keys


@pytest.fixture(scope="module")
def tft_model(tmp_path_factory):
    from support.tft_model import build_tft_model

    return build_tft_model(tmp_path_factory.mktemp("tft"))


def tables(directory: Path) -> list[tuple]:
    """table_keys, each table's keys in order; the tables in any order (a TF2 SavedModel's
    library lists its functions in an order of its own)."""
    return sorted((tuple(keys) for keys in table_keys(directory)), key=repr)


def save_tf1_model(directory: Path, sizes_file: Path, *, with_assets: bool = True) -> Path:
    """The classic TF1 export: placeholders, a StaticHashTable of constant keys and one read
    from a text file (int64 keys in column 0), SavedModelBuilder with tables_initializer as
    main op; the text file registered as an asset unless `with_assets` is false."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        features = tf.compat.v1.placeholder(tf.float32, [None, 2], name="features")
        color = tf.compat.v1.placeholder(tf.string, [None], name="color")
        size = tf.compat.v1.placeholder(tf.int64, [None], name="size")
        colors = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(["red", "green", "blue"]), tf.constant([0, 1, 2], tf.int64)), -1)
        sizes = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(sizes_file), tf.int64, 0, tf.string, 1, delimiter="\t"), "unknown")
        prediction = tf.reduce_sum(features, 1) + tf.cast(colors.lookup(color), tf.float32)
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"features": features, "color": color, "size": size},
            {"prediction": prediction, "size_name": sizes.lookup(size)})
        builder = tf.compat.v1.saved_model.Builder(str(directory))
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature},
            main_op=tf.compat.v1.tables_initializer(),
            assets_collection=(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.ASSET_FILEPATHS) if with_assets else None))
        builder.save()
    return directory


def test_a_tf1_graph_gives_its_constant_keys_and_its_asset_files_column(tmp_path):
    import tensorflow as tf

    sizes_file = tmp_path / "sizes.tsv"
    sizes_file.write_text("7\tseven\n11\televen\n-3\tminus three\n")
    model = save_tf1_model(tmp_path / "tf1", sizes_file)
    sizes_file.unlink()  # what the SavedModel holds is its assets/ copy
    # The model is what TF Serving loads: its session loader runs the main op.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(model))
        signature = meta_graph.signature_def["serving_default"]
        prediction, size_name = session.run(
            [signature.outputs["prediction"].name, signature.outputs["size_name"].name],
            {signature.inputs["features"].name: [[1.0, 1.0]],
             signature.inputs["color"].name: [b"blue"], signature.inputs["size"].name: [11]})
    assert (prediction.tolist(), size_name.tolist()) == ([4.0], [b"eleven"])

    assert table_keys(model) == [["red", "green", "blue"], [7, 11, -3]]
    # Samples draw strings and the integers >= 0 (a negative key is usually a sentinel).
    vocabularies = read_vocabularies(model)
    assert (vocabularies.strings, vocabularies.integers) == (("red", "green", "blue"), (7, 11))


def test_a_tf1_text_file_that_is_not_an_asset_is_taken_from_assets_by_its_name(tmp_path):
    """A TF1 builder given no assets keeps the file's original path in a constant; the file is
    taken only where the SavedModel holds a copy of that name."""
    sizes_file = tmp_path / "sizes.tsv"
    sizes_file.write_text("7\tseven\n")
    model = save_tf1_model(tmp_path / "tf1", sizes_file, with_assets=False)
    sizes_file.unlink()  # the machine that built the model had it; this one does not
    assert table_keys(model) == [["red", "green", "blue"]]
    (model / "assets").mkdir()
    (model / "assets" / "sizes.tsv").write_text("5\tfive\n")
    assert table_keys(model) == [["red", "green", "blue"], [5]]


def test_tf2_text_file_tables_read_as_their_initializers_say(tmp_path):
    """Whole lines (a classic vocabulary), one column split at the delimiter and at most
    vocab_size lines; a table keyed by line number has no keys to take."""
    import tensorflow as tf

    words = tmp_path / "words.txt"
    words.write_text("alpha\nbeta\r\ngamma\nnaïve\n")  # \r\n as TensorFlow reads it
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("1,one\n2,two\n3,three\n")
    inverse = tmp_path / "inverse.txt"
    inverse.write_text("zero\none\n")

    class Tables(tf.Module):
        def __init__(self):
            super().__init__()
            self.words = tf.lookup.StaticVocabularyTable(tf.lookup.TextFileInitializer(
                str(words), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
            self.pairs = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                str(pairs), tf.string, 1, tf.int64, 0, delimiter=",", vocab_size=2), -1)
            self.inverse = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                str(inverse), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE), "?")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                      tf.TensorSpec([None], tf.int64)])
        def __call__(self, word, index):
            return {"word": self.words.lookup(word), "pair": self.pairs.lookup(word),
                    "inverse": self.inverse.lookup(index)}

    module = Tables()
    tf.saved_model.save(module, str(tmp_path / "tf2"),
                        signatures=module.__call__.get_concrete_function())
    for source in (words, pairs, inverse):
        source.unlink()
    assert tables(tmp_path / "tf2") == [("alpha", "beta", "gamma", "naïve"), ("one", "two")]


def test_a_long_vocabulary_gives_its_first_entries(tmp_path):
    import tensorflow as tf

    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(f"word{i}\n" for i in range(5000)))
    module = tf.Module()
    module.table = tf.lookup.StaticVocabularyTable(tf.lookup.TextFileInitializer(
        str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
    module.lookup = tf.function(module.table.lookup,
                                input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "long"))
    assert table_keys(tmp_path / "long") == [[f"word{i}" for i in range(MAX_KEYS)]]


def test_a_keras_export_gives_its_lookup_layers_vocabularies(tmp_path):
    """Keras keeps a StringLookup's and an IntegerLookup's vocabulary as constants, captured
    by the table initializers of model.export's SavedModel."""
    import keras

    color = keras.Input((1,), dtype="string", name="color")
    code = keras.Input((1,), dtype="int64", name="code")
    one_hot = keras.layers.Concatenate()([
        keras.layers.StringLookup(vocabulary=["cat", "dog"], output_mode="one_hot")(color),
        keras.layers.IntegerLookup(vocabulary=[4, 9, 12], output_mode="one_hot")(code)])
    model = keras.Model({"color": color, "code": code}, keras.layers.Dense(1)(one_hot))
    model.export(str(tmp_path / "keras"), verbose=False)
    assert tables(tmp_path / "keras") == [("cat", "dog"), (4, 9, 12)]


def test_the_tensorflow_transform_model_serves_the_trainers_scores_through_tf1s_loader(
        tft_model):
    """The fixture is a model TF Serving can serve: its session loader runs the tables'
    initializers and restores the variables; an example outside the vocabulary is answered
    too (the OOV bucket)."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"],
                                                          str(tft_model.path))
        signature = meta_graph.signature_def["serving_default"]
        scores = session.run(signature.outputs["scores"].name,
                             {signature.inputs["examples"].name: list(tft_model.examples)})
    np.testing.assert_allclose(scores, tft_model.scores, rtol=1e-6, atol=1e-7)
    assert scores.shape == (len(tft_model.vocabulary) + 1, 2)


def test_a_tensorflow_transform_model_gives_its_vocabulary(tft_model):
    """The Trainer's model applies the transform graph (tft_layer); its vocabulary file is an
    asset of the model, and of the transform graph itself."""
    assert tft_model.vocabulary == ("red", "green", "blue", "yellow", "purple")
    assert table_keys(tft_model.path) == [list(tft_model.vocabulary)]
    assert table_keys(tft_model.transform_output / "transform_fn") == [
        list(tft_model.vocabulary)]


def test_samples_for_a_saved_model_source_hold_vocabulary_words_and_others(tft_model):
    """Each endpoint's batch-1 sample holds vocabulary colors only; the batch of 4 holds them
    in its first examples and a color outside the vocabulary in its last one."""
    import tensorflow as tf
    from support.tft_model import TF_EXAMPLE_FEATURES

    from shipyard.core.spec import parse_spec
    from shipyard.exporter import archive
    from shipyard.exporter.samples import make_samples
    from shipyard.exporter.source import load_source_model

    source = load_source_model(tft_model.path)
    lookups = archive._lookup_vocabularies(source)
    assert lookups == [list(tft_model.vocabulary)]
    vocabularies = archive._sample_vocabularies(lookups, source)
    (endpoint,) = parse_spec({"endpoints": [{
        "name": "classify", "method": "serving_default", "kind": "classify",
        "inputs": [{"tf_example": TF_EXAMPLE_FEATURES}], "output": "scores",
        "classes": ["0", "1"]}]}).endpoints
    signature = source.obj.signatures["serving_default"]
    words = set(tft_model.vocabulary)
    colors_by_batch = {}
    for sample in make_samples(endpoint, vocabularies):
        (examples,) = sample.named.values()
        parsed = tf.io.parse_example(examples.tolist(), tft_model.raw_feature_spec)
        colors_by_batch[sample.batch_size] = [c.decode() for c in parsed["color"].numpy()]
        scores = signature(examples=tf.constant(examples.tolist()))["scores"].numpy()
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)  # answered, OOV too
    assert set(colors_by_batch) == {1, 4}
    assert set(colors_by_batch[1]) <= words
    assert set(colors_by_batch[4][:3]) <= words
    assert colors_by_batch[4][3] not in words
    # Seeded: the same samples again.
    assert [s.named["inputs"].tolist() for s in make_samples(endpoint, vocabularies)] == [
        s.named["inputs"].tolist() for s in make_samples(endpoint, vocabularies)]


def test_unreadable_saved_models_are_refused_with_what_is_wrong(tmp_path):
    with pytest.raises(ModelLoadError, match=r"MODEL: .*empty is not a SavedModel directory: it "
                                             r"has no saved_model\.pb"):
        table_keys(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match=r"MODEL: .*broken's saved_model\.pb\(txt\) is "
                                             r"corrupt \(not a SavedModel protocol buffer"):
        table_keys(broken)


def test_a_vocabulary_missing_from_assets_is_refused(tft_model, tmp_path):
    import shutil

    copy = Path(shutil.copytree(tft_model.path, tmp_path / "copy"))
    (copy / "assets" / "color").unlink()
    with pytest.raises(ModelLoadError, match=r"a lookup table is initialized from assets/color, "
                                             r"which is missing; the SavedModel is incomplete"):
        table_keys(copy)


def test_a_tensorflow_transform_models_warmup_holds_its_vocabulary_and_a_word_outside_it(
        tft_model, launcher, repo):
    """Exported with its serving_default and a classify endpoint over it: each warmup request
    of one example carries a vocabulary color; each of four, three and one outside it."""
    from support.exports import export, read_warmup
    from support.tft_model import TFT_SPEC
    from tensorflow.core.example import example_pb2

    spec = TFT_SPEC
    result = export(launcher, tft_model.path, spec, repo)
    assert result.manifest.source["format"] == "saved_model"
    words = set(tft_model.vocabulary)
    in_vocabulary = []
    for log in read_warmup(result.path):
        if log.HasField("classify_log"):
            examples = log.classify_log.request.input.example_list.examples
        else:
            examples = [example_pb2.Example.FromString(serialized) for serialized in
                        log.predict_log.request.inputs["examples"].string_val]
        in_vocabulary.append([e.features.feature["color"].bytes_list.value[0].decode() in words
                              for e in examples])
    # serving_default and classify, at batch sizes 1 and 4
    assert sorted(in_vocabulary) == sorted([[True], [True, True, True, False]] * 2)


def test_a_tensorflow_transform_model_ships_through_shipyard_pusher_and_classifies(
        tft_model, tmp_path):
    """Issue 23's TFX case whole: the Trainer's model (a real Transform graph: a vocabulary
    and scale_to_z_score, applied by tft_layer inside serving_default) imported as a Trainer
    leaves it, pushed by ShipyardPusher with a classify endpoint; TensorFlow's own
    saved_model_cli runs the pushed version's classify signature on examples and gives the
    Trainer's scores, for vocabulary colors and one outside it."""
    import re
    import shutil
    import subprocess
    import sys

    from support.tft_model import TFT_SPEC
    from support.tfx_pipelines import by_component, pipeline, pushed_artifacts
    from tensorflow.core.example import example_pb2
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from shipyard.core.manifest import read_manifest

    model_dir = tmp_path / "trainer-model"
    shutil.copytree(tft_model.path, model_dir / "Format-Serving")
    spec = TFT_SPEC
    repo = tmp_path / "repo"
    LocalDagRunner().run(pipeline(tmp_path, model_dir, blessed=1, repo=repo,
                                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  spec=spec, model_name="tft"))
    pushed = by_component(pushed_artifacts(tmp_path)[0])["ShipyardPusher"]
    version = repo / "tft" / pushed.custom_properties["pushed_version"].string_value
    manifest = read_manifest(version)
    assert manifest.source["shipped"]["added"].keys() == {"classify"}
    assert manifest.signatures["classify"]["method_name"] == "tensorflow/serving/classify"

    examples = [example_pb2.Example.FromString(e) for e in tft_model.examples]
    literal = "[" + ",".join(
        "{" + ",".join(f'"{name}":[{_feature_literal(e, name)}]' for name in ("color", "size"))
        + "}" for e in examples) + "]"
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "saved_model_cli"), "run", "--dir", str(version),
         "--tag_set", "serve", "--signature_def", "classify",
         "--input_examples", f"inputs={literal}"],
        capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    printed = ran.stdout.split("Result for output key scores:")[1]
    scores = np.array([float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]?\d+)?", printed)])
    np.testing.assert_allclose(scores.reshape(tft_model.scores.shape), tft_model.scores,
                               atol=1e-5)


def _feature_literal(example, name: str) -> str:
    feature = example.features.feature[name]
    if feature.bytes_list.value:
        return ",".join(f'"{v.decode()}"' for v in feature.bytes_list.value)
    return ",".join(repr(float(v)) for v in feature.float_list.value)
