"""Loading a .keras file with one copy of each weight (exporter/keras_loading.py): the model
that comes out is the one Keras's own `load_model` gives, value for value, while no loaded
variable runs its initializer and none is left uninitialized. Real Keras, real files; the
memory it saves is measured in bench/ (bench/README.md), not here."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from shipyard.exporter.keras_loading import (  # noqa: E402
    READING_METHODS,
    FileWindow,
    hdf5_container,
    mapped_dataset,
    variables_filled_from_file,
    weights_member,
    weights_read_from_disk,
)

INITIALIZER_CALLS = {"count": 0}


@keras.saving.register_keras_serializable(package="shipyard_loading_test")
class CountingInitializer(keras.initializers.Initializer):
    """GlorotUniform that counts its calls."""

    def __call__(self, shape, dtype=None):
        INITIALIZER_CALLS["count"] += 1
        return keras.initializers.GlorotUniform(seed=1)(shape, dtype=dtype)


@keras.saving.register_keras_serializable(package="shipyard_loading_test")
class PartlySaved(keras.layers.Layer):
    """A layer that saves and loads only its first variable, as custom layers may."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")
        self.offset = self.add_weight(shape=(input_shape[-1],),
                                      initializer=keras.initializers.Constant(7.0),
                                      trainable=False)

    def call(self, x):
        return x * self.scale + self.offset

    def save_own_variables(self, store):
        store["0"] = self.scale.numpy()

    def load_own_variables(self, store):
        self.scale.assign(store["0"])


def trained_model(path):
    """Dense, bfloat16 Dense, Embedding, BatchNormalization (non-trainable state) and Adam's
    slots, all moved away from their initial values by one step of training."""
    numbers = keras.Input((6,), name="numbers")
    ids = keras.Input((2,), name="ids", dtype="int32")
    x = keras.layers.Dense(40, kernel_initializer=CountingInitializer())(numbers)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(40, dtype="mixed_bfloat16")(x)
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 3)(ids))
    x = keras.layers.Concatenate()([keras.ops.cast(x, "float32"), embedded])
    out = PartlySaved()(keras.layers.Dense(5)(x))
    model = keras.Model([numbers, ids], out)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.fit([rng.normal(size=(32, 6)), rng.integers(0, 10, size=(32, 2))],
              rng.normal(size=(32, 5)), epochs=1, verbose=0)
    model.save(path)
    return path


def all_values(model) -> list[np.ndarray]:
    variables = list(model.variables) + list(model.optimizer.variables)
    return [np.asarray(v.numpy()) for v in variables]


def deflated_copy(path: Path) -> Path:
    """The same .keras archive zipped again with compression, as a user's tool may."""
    copy = path.with_name(f"deflated-{path.name}")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item), zipfile.ZIP_DEFLATED)
    return copy


@pytest.mark.parametrize("compressed", [False, True], ids=["as-keras-writes-it", "deflated"])
def test_the_loaded_model_is_keras_own_load_value_for_value(tmp_path, caplog, compressed):
    path = trained_model(tmp_path / "model.keras")
    reference = keras.saving.load_model(path)
    if compressed:
        path = deflated_copy(path)

    # As the exporter loads, with a tiny chunk, so that each value but the smallest is
    # mapped from the file and written in many pieces.
    with caplog.at_level(logging.DEBUG, logger="shipyard.exporter.keras_loading"):
        with weights_read_from_disk(path) as readable, variables_filled_from_file(chunk_bytes=100):
            loaded = keras.saving.load_model(readable)

    expected, got = all_values(reference), all_values(loaded)
    assert len(got) == len(expected) > 10
    for want, have in zip(expected, got):
        assert have.dtype == want.dtype and np.array_equal(have, want)
    sources = {r.getMessage().rpartition(" mapped from ")[2] for r in caplog.records
               if " mapped from " in r.getMessage()}
    mapped = [r for r in caplog.records if " mapped from " in r.getMessage()]
    assert len(mapped) >= 6
    if compressed:  # extracted to a directory of shipyard's, read from there
        assert len(sources) == 1 and sources.pop().endswith("/model.weights.h5")
    else:  # read in place: from the .keras file itself, nothing extracted
        assert sources == {str(path)}
        assert any(r.getMessage().startswith(f"model.weights.h5: read in place from {path} at ")
                   for r in caplog.records)
    assert str(loaded.layers[-1].offset.dtype) == "float32"
    np.testing.assert_array_equal(loaded.layers[-1].offset.numpy(), 7.0)


def test_the_weights_member_is_found_where_it_is_stored(tmp_path):
    path = trained_model(tmp_path / "model.keras")
    offset, size = weights_member(path)
    with zipfile.ZipFile(path) as archive:
        assert path.read_bytes()[offset:offset + size] == archive.read("model.weights.h5")
    assert weights_member(deflated_copy(path)) is None
    assert weights_member(path, "no-such-member") is None
    assert weights_member(tmp_path / "missing.keras") is None


def test_loaded_variables_do_not_run_their_initializers(tmp_path):
    path = trained_model(tmp_path / "model.keras")

    before = INITIALIZER_CALLS["count"]
    keras.saving.load_model(path)  # Keras by itself: the kernel is initialized, then loaded
    assert INITIALIZER_CALLS["count"] == before + 1

    with variables_filled_from_file():
        keras.saving.load_model(path)
    assert INITIALIZER_CALLS["count"] == before + 1


def test_no_variable_of_an_ordinary_model_is_filled_on_read(tmp_path):
    """Keras itself reads no variable eagerly while it loads: the read guard leaves every
    variable to the file (the optimization stays whole)."""
    path = trained_model(tmp_path / "model.keras")

    with variables_filled_from_file() as report:
        keras.saving.load_model(path)

    assert report.filled_on_read == []


def test_a_variable_read_while_built_reads_its_initializer_value_as_in_keras(tmp_path):
    """The layer derives a constant from its weight in build(): Keras's own load computes it
    from the initializer's value (ones), then assigns the file's (3.0); so does this one."""
    from support.build_time_reads import ReadsInBuild, saved_model_with

    path = saved_model_with(ReadsInBuild(), tmp_path / "m.keras")
    x = np.ones((1, 3), np.float32)
    keras_own = keras.saving.load_model(path)

    with variables_filled_from_file() as report:
        loaded = keras.saving.load_model(path)

    assert report.filled_on_read == [loaded.layers[-1].w.path]
    assert loaded.layers[-1].init_sum == keras_own.layers[-1].init_sum == 3.0
    np.testing.assert_array_equal(loaded(x), keras_own(x))
    np.testing.assert_array_equal(loaded(x), [[6.0, 6.0, 6.0]])


def test_a_read_inside_a_tf_function_while_built_is_not_seen(tmp_path):
    """What the guard cannot see (the export's comparison with Keras's own load catches it:
    integration/test_independent_reference.py)."""
    from support.build_time_reads import ReadsInFunction, saved_model_with

    path = saved_model_with(ReadsInFunction(), tmp_path / "m.keras")
    assert keras.saving.load_model(path).layers[-1].init_sum == 6.0

    with variables_filled_from_file() as report:
        keras.saving.load_model(path)

    assert report.filled_on_read == []


def test_a_variable_the_file_does_not_hold_gets_its_initializer_value(tmp_path):
    """PartlySaved.offset is not in the file: never left as uninitialized memory."""
    path = trained_model(tmp_path / "model.keras")

    with variables_filled_from_file():
        loaded = keras.saving.load_model(path)

    offset = loaded.layers[-1].offset.numpy()
    np.testing.assert_array_equal(offset, np.full((5,), 7.0, np.float32))


@keras.saving.register_keras_serializable(package="shipyard_loading_test")
class Noisy(keras.layers.Layer):
    """Draws random numbers when called, as a VAE's sampling layer does: Keras calls it
    symbolically (in a stateless scope) while it rebuilds the model, advancing the seed
    state only there."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x):
        return x + 0.0 * keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)


def test_a_seed_state_advanced_only_symbolically_is_keras_own(tmp_path):
    inputs = keras.Input((3,))
    keras.Model(inputs, Noisy()(keras.layers.Dense(3)(inputs))).save(tmp_path / "m.keras")
    reference = keras.saving.load_model(tmp_path / "m.keras")

    with variables_filled_from_file():
        loaded = keras.saving.load_model(tmp_path / "m.keras")

    def seed_state(model):
        return model.layers[-1].seed_generator.state.numpy()

    np.testing.assert_array_equal(seed_state(loaded), seed_state(reference))


def test_keras_is_itself_again_after_a_failed_load(tmp_path):
    from keras.src.backend.tensorflow.core import Variable
    from keras.src.saving.saving_lib import H5IOStore
    from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable

    def replaced_names():
        return {(owner.__name__, name): (name in owner.__dict__, getattr(owner, name))
                for owner, name in [(Variable, "assign"), (H5IOStore, "__getitem__"),
                                    (Variable, "_initialize_with_initializer")]
                + [(BaseResourceVariable, name) for name in READING_METHODS]}

    before = replaced_names()
    # The model's variables exist, then reading their values fails: a truncated weights file.
    path = trained_model(tmp_path / "model.keras")
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:len(data) // 2] if item.filename.endswith(".h5") else data)

    with pytest.raises(OSError, match="truncated file"):
        with variables_filled_from_file():
            keras.saving.load_model(broken)

    assert replaced_names() == before  # inherited Variable.assign is inherited again
    fresh = keras.Variable(initializer=keras.initializers.Constant(3.0), shape=(4,))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh), 3.0)


def test_only_whole_uncompressed_numeric_datasets_are_mapped(tmp_path):
    h5py = pytest.importorskip("h5py")
    values = np.arange(4000, dtype=np.float32).reshape(100, 40)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["plain"] = values
        f.create_dataset("chunked", data=values, chunks=(10, 40))
        f.create_dataset("compressed", data=values, compression="gzip")
        f["small"] = values[:1]
        marked = f.create_dataset("bf16", data=values)
        marked.attrs["dtype"] = "bfloat16"  # Keras's mark: it converts these itself
        f["words"] = np.array([b"a", b"b"] * 100, dtype="S1")

    with h5py.File(tmp_path / "w.h5", "r") as f:
        container = hdf5_container(f["plain"])
        assert container == (tmp_path / "w.h5", 0, (tmp_path / "w.h5").stat().st_size)
        array, mapping, offset = mapped_dataset(f["plain"], 1000, container)
        np.testing.assert_array_equal(array, values)
        array[0, 0] = -1.0  # copy-on-write: the file keeps its value
        for name in ("chunked", "compressed", "small", "bf16", "words"):
            assert mapped_dataset(f[name], 1000, container) is None, name
        assert mapped_dataset(f["plain"], 1000, None) is None
        np.testing.assert_array_equal(f["plain"][0, 0], 0.0)


def test_a_file_window_reads_its_part_of_the_file_only(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(bytes(range(100)))
    window = FileWindow(path, 10, 20)

    assert window.read(5) == bytes(range(10, 15)) and window.tell() == 5
    assert window.seek(-3, io.SEEK_END) == 17 and window.read() == bytes(range(27, 30))
    assert window.read(4) == b""  # the window ends before the file does
    window.seek(2)
    assert window.seek(3, io.SEEK_CUR) == 5 and window.read(2) == bytes([15, 16])
    assert window.seek(-50, io.SEEK_CUR) == 0
    window.close()
    assert window.closed
