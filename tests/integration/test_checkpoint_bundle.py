"""Checkpoint digests read from the files a few MiB at a time (exporter/checkpoint_bundle.py)
equal the digests of the whole tensors TensorFlow's own reader returns, for every dtype a
checkpoint holds; what the reader does not stream, it reads whole. Real checkpoints written
by TensorFlow."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from shipyard.exporter.archive import checkpoint_digests  # noqa: E402
from shipyard.exporter.checkpoint_bundle import (  # noqa: E402
    UnreadableBundle,
    stored_tensors,
    streamed_digest,
    table_entries,
)
from shipyard.exporter.checkpoint_bundle import checkpoint_digests as bundle_digests  # noqa: E402
from shipyard.exporter.verifier import array_digest  # noqa: E402


def write_checkpoint(directory: Path) -> Path:
    """Variables of many dtypes and shapes, some large enough to take many reads."""
    rng = np.random.default_rng(0)
    variables = {
        "kernel": tf.Variable(rng.normal(size=(300, 257)).astype(np.float32)),
        "scalar": tf.Variable(np.float64(3.5)),
        "counts": tf.Variable(rng.integers(-9, 9, size=(1001,), dtype=np.int64)),
        "bytes": tf.Variable(rng.integers(0, 255, size=(7, 3), dtype=np.uint8)),
        "half": tf.Variable(rng.normal(size=(33,)).astype(np.float16)),
        "flags": tf.Variable(rng.integers(0, 2, size=(10,)).astype(bool)),
        "complex": tf.Variable((rng.normal(size=(4,)) + 1j).astype(np.complex64)),
        "bf16": tf.Variable(tf.cast(rng.normal(size=(5, 5)), tf.bfloat16)),
        "words": tf.Variable(["a", "bb", ""]),
        "empty": tf.Variable(np.zeros((0, 4), np.float32)),
    }
    return Path(tf.train.Checkpoint(**variables).write(str(directory / "ckpt")))


def whole_tensor_digests(prefix: Path, keys: list[str]) -> list[str]:
    """What checkpoint_digests computed before it streamed: get_tensor, then array_digest."""
    reader = tf.train.load_checkpoint(str(prefix))
    return [array_digest(np.asarray(reader.get_tensor(key))) for key in keys]


def tensor_keys(prefix: Path) -> list[str]:
    shapes = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    return [key for key in shapes if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def digests_and_whole_reads(prefix: Path, keys: list[str], reader=None,
                            read_bytes: int = 4 << 20) -> tuple[list[str], list[str]]:
    """checkpoint_bundle's digests, and the keys it had to read whole with get_tensor."""
    reader = reader or tf.train.load_checkpoint(str(prefix))
    read_whole = []

    def whole(key):
        read_whole.append(key)
        return np.asarray(reader.get_tensor(key))

    return bundle_digests(prefix, keys, whole, array_digest, read_bytes=read_bytes), read_whole


def test_streamed_digests_equal_whole_tensor_digests_for_every_dtype(tmp_path):
    prefix = write_checkpoint(tmp_path)
    keys = tensor_keys(prefix)

    # 1000 bytes a read: the kernel (308 KB) takes hundreds, ending with a short one.
    streamed, read_whole = digests_and_whole_reads(prefix, keys, read_bytes=1000)

    assert streamed == whole_tensor_digests(prefix, keys)
    names = {key.split("/")[0] for key in stored_tensors(prefix)}
    assert {"kernel", "scalar", "counts", "bytes", "half", "flags", "complex",
            "empty"} == names
    # Read whole: their digest is not of their stored bytes.
    assert {key.split("/")[0] for key in read_whole} == {"bf16", "words"}


def test_an_exports_checkpoint_digests_are_unchanged(launcher, models, repo):
    from support.exports import export
    from support.specs import FUNCTIONAL_SPEC

    result = export(launcher, models.path("functional"), FUNCTIONAL_SPEC, repo)
    prefix = Path(result.path) / "variables" / "variables"

    assert checkpoint_digests(Path(result.path)) == whole_tensor_digests(
        prefix, tensor_keys(prefix))
    assert sorted(stored_tensors(prefix)) == sorted(tensor_keys(prefix))  # all streamed


@pytest.mark.parametrize("shard_bytes, sliced", [(16_384, False), (20_000, True)])
def test_a_checkpoint_in_several_shards(tmp_path, shard_bytes, sliced):
    """TF's MaxShardSizePolicy puts one 16 KiB tensor in each 16 KiB shard; with 20 KB
    shards it cuts tensors into slices across shards, which are read whole."""
    rng = np.random.default_rng(1)
    variables = {f"v{i}": tf.Variable(rng.normal(size=(64, 64)).astype(np.float32))
                 for i in range(4)}
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(shard_bytes))
    prefix = Path(tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"),
                                                          options=options))
    keys = tensor_keys(prefix)

    digests, read_whole = digests_and_whole_reads(prefix, keys)

    assert len(list(tmp_path.glob("ckpt.data-*-of-00004"))) == 4
    assert digests == whole_tensor_digests(prefix, keys)
    stored = stored_tensors(prefix)
    if sliced:
        assert len(read_whole) == 3 and len(stored) == 1  # v0 fits whole in the first shard
    else:
        assert read_whole == [] and len({t.data_file for t in stored.values()}) == 4


def test_a_partitioned_variable_is_read_whole(tmp_path):
    """TF1 partitioned variables are stored as slices: get_tensor assembles them."""
    with tf.Graph().as_default():
        tf.compat.v1.get_variable(
            "partitioned", shape=(10, 4), partitioner=tf.compat.v1.fixed_size_partitioner(3),
            initializer=tf.compat.v1.random_normal_initializer(seed=1))
        tf.compat.v1.get_variable("whole", shape=(5,))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            prefix = Path(saver.save(session, str(tmp_path / "ckpt")))
    keys = tensor_keys(prefix)

    digests, read_whole = digests_and_whole_reads(prefix, keys)

    assert sorted(keys) == ["partitioned", "whole"]
    assert digests == whole_tensor_digests(prefix, keys)
    assert read_whole == ["partitioned"] and list(stored_tensors(prefix)) == ["whole"]


def test_a_truncated_data_file_is_named(tmp_path):
    prefix = write_checkpoint(tmp_path)
    kernel = next(t for k, t in stored_tensors(prefix).items() if k.startswith("kernel"))
    with open(kernel.data_file, "r+b") as data:
        data.truncate(kernel.offset + 10)

    with pytest.raises(OSError, match=r"ckpt\.data-00000-of-00001 ends before the tensor .* "
                                      "the checkpoint is truncated"):
        streamed_digest(kernel)


def test_an_index_that_is_not_a_table_is_refused_and_read_whole(tmp_path):
    prefix = write_checkpoint(tmp_path)
    index = Path(f"{prefix}.index").read_bytes()
    with pytest.raises(UnreadableBundle, match="no table magic number"):
        list(table_entries(index[:-1] + b"\x00"))
    with pytest.raises(UnreadableBundle, match="shorter than a table's footer"):
        list(table_entries(b"\x00" * 10))

    keys = tensor_keys(prefix)
    expected = whole_tensor_digests(prefix, keys)
    reader = tf.train.load_checkpoint(str(prefix))  # opened before the index is spoilt
    Path(f"{prefix}.index").write_bytes(index[:-8] + b"\x00" * 8)

    assert digests_and_whole_reads(prefix, keys, reader) == (expected, keys)


def test_the_digests_stop_when_asked(tmp_path):
    from shipyard.core.manifest import HashingStopped

    prefix = write_checkpoint(tmp_path)
    stop = threading.Event()
    stop.set()
    kernel = next(t for k, t in stored_tensors(prefix).items() if k.startswith("kernel"))

    with pytest.raises(HashingStopped, match="stopped hashing .*: the export already failed"):
        bundle_digests(prefix, tensor_keys(prefix), lambda key: None, array_digest, stop=stop)
    with pytest.raises(HashingStopped, match=r"stopped hashing .*ckpt\.data-00000-of-00001"):
        streamed_digest(kernel, 1000, stop)
