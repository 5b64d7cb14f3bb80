"""`shipyard export` end to end on real TensorFlow: every export is written, reloaded in a fresh
CPU-only process, compared with the original model, and only then published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.exports import export, read_warmup
from support.specs import FUNCTIONAL_SPEC, SEQUENTIAL_SPEC
from support.versions import add_version

from shipyard.core.errors import (
    BreakingChangeError,
    ModelLoadError,
    SpecError,
    VersionExistsError,
)
from shipyard.core.manifest import checksum_mismatches, read_manifest


def staging_leftovers(repo: Path, name: str = "m") -> list[str]:
    """Every directory in the model's folder: versions and any staging left behind."""
    model_dir = repo / name
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir()) if model_dir.exists() else []


def test_sequential_model_round_trip(launcher, models, repo):
    import keras
    import tensorflow as tf

    result = export(launcher, models.path("sequential"), SEQUENTIAL_SPEC, repo)

    assert result.version == 1
    version_dir = repo / "m" / "1"
    assert result.path == str(version_dir.resolve())
    assert {p.name for p in version_dir.iterdir()} >= {"saved_model.pb", "variables",
                                                      "assets.extra"}
    loaded = tf.saved_model.load(str(version_dir))
    assert set(loaded.signatures) == {"serve", "serving_default"}
    serve = loaded.signatures["serve"]
    assert list(serve.structured_input_signature[1]) == ["x"]  # the declared name
    assert list(serve.structured_outputs) == ["logits"]  # the model's output name
    x = np.random.default_rng(5).standard_normal((7, 3)).astype("float32")
    original = keras.saving.load_model(models.path("sequential"))(x)
    np.testing.assert_allclose(serve(x=tf.constant(x))["logits"].numpy(), original, atol=1e-6)

    manifest = read_manifest(version_dir)
    assert checksum_mismatches(version_dir, manifest) == []
    assert manifest.fingerprint == result.to_json()["fingerprint"]
    assert manifest.source["format"] == "keras"
    assert manifest.parity["serve"]["batch_sizes"] == [1, 4]
    assert manifest.parity["serve"]["max_abs_error"] <= 1e-5
    assert manifest.verification["devices"] == ["CPU"]
    assert result.to_json() == {
        "name": "m", "version": 1, "path": str(version_dir.resolve()),
        "fingerprint": manifest.fingerprint, "endpoints": ["serve"],
        "variable_collections": {}, "parity": {"serve": manifest.parity["serve"]["max_abs_error"]},
    }
    warmup = read_warmup(version_dir)
    # Each batch size through `serve`, then serving_default: a separate function in the graph,
    # warmed for clients that omit signature_name.
    assert manifest.warmup_records == len(warmup) == 3
    assert [w.predict_log.request.model_spec.signature_name for w in warmup] == [
        "serve", "serve", "serving_default"]
    assert [list(w.predict_log.request.inputs) for w in warmup] == [["x"], ["x"], ["x"]]
    assert staging_leftovers(repo) == ["1"]


@pytest.fixture(scope="module")
def functional_export(launcher, models, tmp_path_factory):
    """The functional model exported once under FUNCTIONAL_SPEC, for the tests that only read
    the version (its repository gets no other version)."""
    return export(launcher, models.path("functional"), FUNCTIONAL_SPEC,
                  tmp_path_factory.mktemp("functional") / "repo")


def test_functional_model_with_lookup_two_outputs_and_optimizer_state(functional_export,
                                                                      models):
    import keras
    import tensorflow as tf
    from support.specs import COLORS

    result = functional_export

    model = keras.saving.load_model(models.path("functional"))
    collections = result.to_json()["variable_collections"]
    assert collections["optimizer_variables"] == len(model.optimizer.variables) > 2
    assert collections["trainable"] == len(model.trainable_variables)
    assert collections["kernels"] == 3  # the three Dense kernels, no biases
    loaded = tf.saved_model.load(str(result.path))
    for restored, original in zip(loaded.optimizer_variables, model.optimizer.variables):
        np.testing.assert_array_equal(restored.numpy(), np.asarray(original))
    signature = loaded.signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == ["color", "x1"]
    assert sorted(signature.structured_outputs) == ["probs", "score"]
    # Warmup strings come from the StringLookup vocabulary, so they exercise real entries;
    # the last row of a batch of several is outside it, so they exercise the OOV path too.
    for log in read_warmup(result.path):
        colors = [c.decode() for c in
                  tf.make_ndarray(log.predict_log.request.inputs["color"]).ravel()]
        assert [c in COLORS for c in colors] == [True] * (len(colors) - 1) + [len(colors) == 1]


def test_the_export_serves_through_tf_servings_session_loader(functional_export):
    """TF Serving loads with the TF1 session loader and tags {serve}: do the same."""
    import tensorflow as tf

    result = functional_export
    signature = tf.saved_model.load(str(result.path)).signatures["serve"]
    feed = {"x1": np.ones((2, 3), "float32"), "color": np.array([[b"red"], [b"blue"]])}
    expected = {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feed.items()}).items()}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(result.path))
        sig = meta_graph.signature_def["serving_default"]
        assert sig.method_name == "tensorflow/serving/predict"
        names = sorted(sig.outputs)
        outputs = session.run([sig.outputs[n].name for n in names],
                              {sig.inputs[k].name: v for k, v in feed.items()})
    for name, value in zip(names, outputs):
        np.testing.assert_allclose(value, expected[name], atol=1e-6)


def test_subclassed_model_with_custom_method_and_training_endpoint(launcher, models, repo):
    import tensorflow as tf

    spec = {
        "endpoints": [
            {"name": "serve", "method": "call", "training": False,
             "inputs": [{"name": "features", "shape": [None, 3], "dtype": "float32"}]},
            {"name": "train", "method": "call", "training": True,
             "inputs": [{"name": "features", "shape": [None, 3], "dtype": "float32"}]},
            {"name": "embed", "method": "embed",
             "inputs": [{"name": "features", "shape": [None, 3], "dtype": "float32"}]},
        ],
        "variable_collections": [{"name": "all_variables", "select": "all"}],
        "default_endpoint": "embed",
    }
    result = export(launcher, models.path("subclassed"), spec, repo)

    # Active dropout is compared exactly: both sides replay the same seed-state sequence.
    assert result.manifest.parity["train"]["max_abs_error"] <= 1e-5
    loaded = tf.saved_model.load(str(result.path))
    assert set(loaded.signatures) == {"serve", "train", "embed", "serving_default"}
    default = loaded.signatures["serving_default"]
    assert list(default.structured_outputs) == ["output_0"]
    assert default.structured_outputs["output_0"].shape.as_list() == [None, 4]  # embed, not call
    x = tf.constant(np.ones((64, 3), "float32"))
    serve = loaded.signatures["serve"]
    np.testing.assert_array_equal(serve(features=x)["output_0"], serve(features=x)["output_0"])
    train = loaded.signatures["train"]
    assert not np.array_equal(train(features=x)["output_0"], train(features=x)["output_0"])


def test_saved_model_directory_as_source(launcher, models, repo):
    """A SavedModel written by model.export() ships whole (issue 23): its signatures (serve,
    serving_default) and its restored function `serve` travel; `main` renames
    serving_default and `predict` is added over the restored function (positional arguments,
    so its input name is free). The signature the spec does not name is verified too."""
    import tensorflow as tf

    from shipyard.exporter.whole import RESAVED

    source = models.saved_model()
    original = tf.saved_model.load(str(source))
    (input_name,) = original.signatures["serving_default"].structured_input_signature[1]
    main = {"name": "main", "method": "serving_default",
            "inputs": [{"name": input_name, "shape": [None, 3], "dtype": "float32"}]}
    predict = {"name": "predict", "method": "serve",  # a restored function
               "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}
    result = export(launcher, source, {"endpoints": [main, predict]}, repo)
    assert result.manifest.source["format"] == "saved_model"
    assert result.manifest.source["shipped"]["how"] == RESAVED
    assert sorted(result.manifest.parity) == ["main", "predict", "serve"]
    loaded = tf.saved_model.load(str(result.path))
    assert sorted(loaded.signatures) == ["main", "predict", "serve", "serving_default"]
    assert list(loaded.signatures["predict"].structured_input_signature[1]) == ["x"]
    x = tf.constant(np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3))
    np.testing.assert_allclose(loaded.serve(x).numpy(), original.serve(x).numpy(), atol=1e-6)

    by_signature = {"endpoints": [{**main, "inputs": [{**main["inputs"][0], "name": "x"}]}]}
    with pytest.raises(SpecError, match=rf"endpoints\[0\]\.inputs: signature 'serving_default' "
                                        rf"of the SavedModel takes inputs \['{input_name}'\]"):
        export(launcher, source, by_signature, repo)
    with pytest.raises(SpecError, match=r"endpoints\[0\]\.training: a SavedModel source has no "
                                        r"training switch"):
        export(launcher, source, {"endpoints": [{**predict, "method": "call",
                                                 "training": True}]}, repo)
    missing = {"endpoints": [{**predict, "method": "nope"}]}
    with pytest.raises(SpecError, match=r"endpoints\[0\]\.method: the SavedModel has no signature "
                                        r"or restored function 'nope'; signatures: "
                                        r"\['serve', 'serving_default'\]"):
        export(launcher, source, missing, repo)
    # serving_default is the source's: a default endpoint it cannot answer (other inputs)
    # would replace it, and nothing of the source is dropped.
    with pytest.raises(SpecError, match=rf"default_endpoint: endpoint 'predict' \(method "
                                        rf"'serve', kind predict\) takes \{{'x': 'float32'\}}, the source's "
                                        rf"serving_default takes \{{'{input_name}': 'float32'\}}"):
        export(launcher, source, {"endpoints": [predict]}, repo)
    assert not (repo / "m").exists() or sorted(p.name for p in (repo / "m").iterdir()
                                               if not p.name.startswith(".")) == ["1"]


def test_fingerprint_is_stable_across_exports_of_the_same_model(launcher, models, repo,
                                                                functional_export):
    first = functional_export  # another export, in another repository
    second = export(launcher, models.path("functional"), FUNCTIONAL_SPEC, repo)
    assert first.manifest.fingerprint == second.manifest.fingerprint
    looser = {**FUNCTIONAL_SPEC, "tolerance": {"atol": 1e-3, "rtol": 1e-3}}
    third = export(launcher, models.path("functional"), looser, repo)
    assert third.manifest.fingerprint != first.manifest.fingerprint


def test_the_architecture_digest_ignores_where_shared_objects_lived_in_memory():
    from shipyard.exporter.archive import keras_config_digest

    def config(first_id: int, second_id: int) -> dict:
        # What Keras writes for a layer reused twice (e.g. a lookup shared by two inputs):
        # shared_object_id is the Python id() of the object in the process that saved it.
        return {"layers": [{"name": "lookup", "shared_object_id": first_id},
                           {"name": "again", "shared_object_id": first_id},
                           {"name": "other", "shared_object_id": second_id}]}

    assert keras_config_digest(config(140362197166224, 1)) == \
        keras_config_digest(config(140486822103376, 7))
    shared_differently = config(5, 6)
    shared_differently["layers"][1]["shared_object_id"] = 6
    assert keras_config_digest(shared_differently) != keras_config_digest(config(5, 6))


def test_models_that_compute_differently_get_different_fingerprints(published):
    # The session's exports under one spec: version 1 the sequential model (relu), version 2
    # sequential_tanh. Same weights (same seed and shapes): only the architecture tells them
    # apart.
    relu, tanh = (read_manifest(published / "m" / version) for version in ("1", "2"))
    weights = sorted(f["sha256"] for f in relu.files if f["path"].startswith("var"))
    assert relu.fingerprint != tanh.fingerprint
    assert weights  # the comparison above is about more than missing weights


def test_string_and_integer_outputs_are_compared_exactly(launcher, models, repo):
    import tensorflow as tf

    spec = {"endpoints": [{"name": "serve", "method": "call",
                           "inputs": [{"ids": {"shape": [None, 1], "dtype": "int64"}}]}]}
    result = export(launcher, models.path("labeler"), spec, repo)
    assert result.manifest.parity["serve"]["max_abs_error"] <= 1e-5
    label = tf.saved_model.load(str(result.path)).signatures["serve"](
        ids=tf.constant([[1], [3]], tf.int64))["label"]
    assert label.numpy().ravel().tolist() == [b"red", b"blue"]


def test_saved_model_signature_with_dict_inputs_keeps_each_input_in_place(launcher, models,
                                                                          repo):
    import tensorflow as tf

    source = models.saved_model("functional")
    # Declared x1 first; TensorFlow flattens dicts by sorted key (color first).
    spec = {"endpoints": [{"name": "predict", "method": "serving_default", "inputs": [
        {"x1": {"shape": [None, 3], "dtype": "float32"},
         "color": {"shape": [None, 1], "dtype": "string"}}]}]}
    original_inputs = sorted(tf.saved_model.load(str(source)).signatures["serve"]
                             .structured_input_signature[1])
    assert original_inputs == ["color", "x1"]
    result = export(launcher, source, spec, repo)
    feed = {"x1": tf.constant(np.ones((2, 3), "float32")),
            "color": tf.constant([[b"red"], [b"green"]])}
    got = tf.saved_model.load(str(result.path)).signatures["predict"](**feed)
    want = tf.saved_model.load(str(source)).signatures["serve"](**feed)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=1e-6)


def test_nested_outputs_are_refused_with_the_output_named(launcher, models, repo):
    with pytest.raises(SpecError, match=r"output 'pair' is list-valued .* add an endpoint method "
                                        r"that flattens the outputs"):
        export(launcher, models.path("nested"), SEQUENTIAL_SPEC, repo, unsafe=False)
    assert not (repo / "m").exists()


def test_breaking_signature_change_is_refused_unless_allowed(launcher, models, published, repo):
    add_version(repo, "m", 1, published / "m" / "1")  # the sequential model's export, x: [None, 3]
    wide = {"endpoints": [{"name": "serve", "method": "call",
                           "inputs": [{"name": "x", "shape": [None, 5], "dtype": "float32"}]}]}
    with pytest.raises(BreakingChangeError, match=r"(?s)breaks clients of version 1.*signature "
                                                  r"'serve' input 'x': shape changed \[None, 3\] "
                                                  r"-> \[None, 5\].*--allow-breaking"):
        export(launcher, models.path("sequential_wide"), wide, repo)
    assert staging_leftovers(repo) == ["1"]
    result = export(launcher, models.path("sequential_wide"), wide, repo, allow_breaking=True)
    assert result.version == 2


def test_an_existing_version_is_refused_before_any_work(launcher, models, repo):
    export(launcher, models.path("sequential"), SEQUENTIAL_SPEC, repo, version=4)
    with pytest.raises(VersionExistsError, match=r"m/4 already exists .* omit --version to use 5"):
        export(lambda: pytest.fail("no verifier should start"), models.path("sequential"),
               SEQUENTIAL_SPEC, repo, version=4)


@pytest.mark.parametrize("kind, spec, message", [
    ("sequential", {"endpoints": [{"name": "e", "method": "embed",
                                   "inputs": [{"shape": [None, 3], "dtype": "float32"}]}]},
     r"endpoints\[0\]\.method: Sequential has no public method 'embed'"),
    ("sequential", {"endpoints": [{"name": "serve", "method": "call",
                                   "inputs": [{"shape": [None, 4], "dtype": "float32"}]}]},
     r"endpoints\[0\] \('serve'\): calling 'call' with the declared inputs "
     r"\(input_0: float32\[null, 4\]\) failed: .*Declare one entry in `inputs` per positional "
     r"argument"),
    ("sequential", {**SEQUENTIAL_SPEC,
                    "variable_collections": [{"name": "opt", "select": "optimizer"}]},
     r"variable_collections\[0\]\.select: 'optimizer' selected, but the model has no optimizer "
     r"state"),
    ("sequential", {**SEQUENTIAL_SPEC,
                    "variable_collections": [{"name": "v", "select": {"regex": "^nomatch"}}]},
     r"variable_collections\[0\]\.select\.regex: '\^nomatch' matches no variable; variable "
     r"paths look like \['dense(_[0-9]+)?/kernel'"),
])
def test_specs_that_do_not_fit_the_model_name_the_field(launcher, models, repo, kind, spec,
                                                         message):
    with pytest.raises(SpecError, match=message):
        export(launcher, models.path(kind), spec, repo)
    assert staging_leftovers(repo) == []


def test_model_load_errors_name_the_file_and_the_fix(launcher, models, repo, tmp_path):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match=r"MODEL: .*corrupt\.keras is corrupt: a \.keras "
                                             r"file is a zip archive"):
        export(launcher, corrupt, SEQUENTIAL_SPEC, repo)
    with pytest.raises(ModelLoadError, match=r"MODEL: .*missing\.keras does not exist"):
        export(launcher, tmp_path / "missing.keras", SEQUENTIAL_SPEC, repo)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match=r"is a directory without saved_model\.pb"):
        export(launcher, empty_dir, SEQUENTIAL_SPEC, repo)
    broken = tmp_path / "broken_saved_model"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match=r"MODEL: .*broken_saved_model/saved_model\.pb is "
                                             r"corrupt \(not a SavedModel protocol buffer"):
        export(launcher, broken, SEQUENTIAL_SPEC, repo)
    assert staging_leftovers(repo) == []


def test_lambda_layers_need_unsafe(launcher, models, repo):
    with pytest.raises(ModelLoadError, match=r"contains a Lambda layer .* pass --unsafe if you "
                                             r"trust this file"):
        export(launcher, models.path("lambda"), SEQUENTIAL_SPEC, repo)
    result = export(launcher, models.path("lambda"), SEQUENTIAL_SPEC, repo, unsafe=True)
    assert result.version == 1
