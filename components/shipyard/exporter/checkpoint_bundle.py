"""Digests of a TensorFlow checkpoint's tensors, read from its files a few MiB at a time.

`tf.train.load_checkpoint(...).get_tensor(key)` hands back a whole tensor, so hashing the
largest one costs its size in memory; reading a slice of it (RestoreV2 with a slice spec)
reads the whole tensor too. The hashing runs while the exporting process still holds every
weight, so at 4 GiB of weights that one tensor set the process's peak (bench/README.md).

A checkpoint is `<prefix>.index`, a table (LevelDB's format: tensorflow/core/lib/io/table.cc,
block.cc, format.cc) mapping each tensor's name to a `BundleEntryProto` (its dtype, shape,
shard, offset and size in `<prefix>.data-SSSSS-of-NNNNN`), and a numeric tensor's bytes there
are its values in little-endian order (tensorflow/core/util/tensor_bundle/tensor_bundle.cc,
`WriteTensor`). So such a tensor's digest can be computed from its bytes, a few MiB at a
time, and equals `array_digest` of the array `get_tensor` returns. Strings, bfloat16, sliced
(partitioned) entries and anything this reader does not recognise are read with `get_tensor`.
The bytes are not checked against the entry's crc32c here: the verifier's load of the same
files does that (`BundleReader` refuses a mismatch).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from google.protobuf.message import DecodeError

from shipyard.core.manifest import check_stop

log = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57  # tensorflow/core/lib/io/format.h kTableMagicNumber
FOOTER_BYTES = 48  # two BlockHandles (up to 20 bytes each, padded to 40) and the magic
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) and crc32c (4)
NO_COMPRESSION = 0
READ_BYTES = 4 << 20


class UnreadableBundle(Exception):
    """The index is not the table this module reads; the caller falls back to get_tensor."""


@dataclass(frozen=True)
class StoredTensor:
    """Where a whole, numeric tensor's bytes are: file, offset, size; its numpy dtype."""
    data_file: Path
    offset: int
    size: int
    dtype: np.dtype
    shape: tuple[int, ...]


def checkpoint_digests(prefix: Path, keys: list[str],
                       whole_tensor: Callable[[str], np.ndarray],
                       digest_array: Callable[[np.ndarray], str],
                       read_bytes: int = READ_BYTES,
                       stop: threading.Event | None = None) -> list[str]:
    """One digest per key, in order: streamed from the data files where the index says how,
    else `digest_array(whole_tensor(key))`. `stop`, once set, ends it with HashingStopped
    before the next tensor or chunk."""
    try:
        stored = stored_tensors(prefix)
    except (UnreadableBundle, OSError, DecodeError, ValueError, IndexError, struct.error) as err:
        log.debug("reading %s with get_tensor: %s", prefix, err)
        stored = {}

    def digest(key: str) -> str:
        # A function, so each whole tensor is freed before the next is read.
        check_stop(stop, key)
        if key in stored:
            return streamed_digest(stored[key], read_bytes, stop)
        return digest_array(whole_tensor(key))

    return [digest(key) for key in keys]


def streamed_digest(tensor: StoredTensor, read_bytes: int = READ_BYTES,
                    stop: threading.Event | None = None) -> str:
    """`array_digest` of the tensor, without holding more than `read_bytes` of it."""
    # array_digest hashes np.ascontiguousarray(value), which makes a scalar an array of one.
    shape = tensor.shape or (1,)
    digest = hashlib.sha256(f"{tensor.dtype.str}{shape}".encode())
    with open(tensor.data_file, "rb") as data:
        data.seek(tensor.offset)
        left = tensor.size
        while left:
            chunk = data.read(min(read_bytes, left))
            if not chunk:
                raise OSError(f"{tensor.data_file} ends before the tensor at {tensor.offset} "
                              f"does ({tensor.size} bytes): the checkpoint is truncated")
            check_stop(stop, tensor.data_file)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def stored_tensors(prefix: Path) -> dict[str, StoredTensor]:
    """The whole, numeric tensors of the checkpoint at `prefix`, by name."""
    import tensorflow as tf
    from tensorflow.core.protobuf import tensor_bundle_pb2

    entries = dict(table_entries(Path(f"{prefix}.index").read_bytes()))
    header = tensor_bundle_pb2.BundleHeaderProto.FromString(entries.pop(b"", b""))
    # get_tensor's arrays are in this machine's byte order: the bytes match only if both are
    # little-endian.
    little = tensor_bundle_pb2.BundleHeaderProto.LITTLE
    if header.endianness != little or sys.byteorder != "little":
        raise UnreadableBundle("not a little-endian checkpoint on a little-endian machine")
    stored = {}
    for key, value in entries.items():
        if key.startswith(b"\x00"):
            continue  # one slice of a partitioned variable (EncodeTensorNameSlice)
        entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        if entry.slices:
            continue  # a partitioned variable: get_tensor assembles its slices
        try:
            dtype = np.dtype(tf.dtypes.as_dtype(entry.dtype).as_numpy_dtype)
        except TypeError:
            continue
        shape = tuple(int(d.size) for d in entry.shape.dim)
        # Strings are stored as lengths then bytes; bfloat16 and float8 (kind "V") are
        # digested as float32 by array_digest (see verifier.plain_array).
        if dtype.kind not in "biufc" or entry.size != dtype.itemsize * int(np.prod(shape)):
            continue
        data_file = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{header.num_shards:05d}")
        stored[key.decode()] = StoredTensor(data_file, entry.offset, entry.size, dtype, shape)
    return stored


def table_entries(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an uncompressed LevelDB-format table, in key order."""
    if len(table) < FOOTER_BYTES:
        raise UnreadableBundle("shorter than a table's footer")
    footer = table[-FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise UnreadableBundle("no table magic number at its end")
    _, position = _block_handle(footer, 0)  # the metaindex block: empty in a bundle
    index_handle, _ = _block_handle(footer, position)
    for _, handle in _block_entries(_block(table, index_handle)):
        data_handle, _ = _block_handle(handle, 0)
        yield from _block_entries(_block(table, data_handle))


def _block(table: bytes, handle: tuple[int, int]) -> bytes:
    offset, size = handle
    if offset + size + BLOCK_TRAILER_BYTES > len(table):
        raise UnreadableBundle("a block runs past the end of the table")
    if table[offset + size] != NO_COMPRESSION:
        raise UnreadableBundle("a compressed block")
    return table[offset:offset + size]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """A block is prefix-compressed entries, then the restart offsets, then their count."""
    if len(block) < 4:
        raise UnreadableBundle("a block too short for its restart count")
    restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise UnreadableBundle("a block's restart array runs past its start")
    key, position = b"", 0
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_size, position = _varint(block, position)
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        yield key, block[position:position + value_size]
        position += value_size


def _block_handle(data: bytes, position: int) -> tuple[tuple[int, int], int]:
    offset, position = _varint(data, position)
    size, position = _varint(data, position)
    return (offset, size), position


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise UnreadableBundle("a truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
