"""Loading a `.keras` file with one copy of each weight in memory, not three or four.

`keras.saving.load_model` builds the model (each variable filled by its initializer), then
assigns each variable the value read from the file. Along the way, for every weight, it holds:
- the whole `model.weights.h5` in an `io.BytesIO`, when Keras thinks it fits in memory;
- the initializer's temporaries (a `GlorotUniform` kernel is three tensors the size of the
  variable), which TensorFlow's CPU allocator keeps for reuse once freed;
- the value read from the file, and two more tensor copies made converting it for `assign`.

At 4 GiB of weights the exporting process peaked at the weights plus 2.97 GiB, all of it in
`load_model`; with both context managers here, at the weights plus 1.00 GiB, imports included
(bench/README.md). `weights_read_from_disk` removes the first copy, `variables_filled_from_file`
the others. Each changes private pieces of Keras for the duration of one load; when a piece
is not where this Keras version is expected to have it, Keras loads as it would by itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import struct
import threading
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from shipyard.files.locks import OwnedWorkdir

log = logging.getLogger(__name__)

# Where a .keras file's weights are extracted while it loads (see weights_read_from_disk).
LOAD_WORKDIR_PREFIX = "shipyard-load-"
# Values are written into their variable this many bytes at a time (see
# variables_filled_from_file). TensorFlow's allocator keeps the chunks' memory for reuse, so a
# smaller chunk leaves less behind: at 2 GiB of weights the process settled 24 MiB lower with
# 4 MiB chunks than with 16, and 56 lower than with 64, in the same load time within noise.
ASSIGN_CHUNK_BYTES = 4 << 20
_REPLACING = threading.RLock()
WEIGHTS_MEMBER = "model.weights.h5"  # keras/src/saving/saving_lib.py _VARS_FNAME_H5
ZIP_LOCAL_HEADER_BYTES = 30  # the zip format's local file header, before name and extra
# The methods of TensorFlow's resource variables that read the value in eager mode.
READING_METHODS = ("_read_variable_op", "sparse_read", "gather_nd", "assign_add", "assign_sub")


class _ReadInPlace(Exception):
    """Raised where Keras asks `is_memory_sufficient`, to take it to its read-on-the-fly path."""


@contextlib.contextmanager
def weights_read_from_disk(path: Path) -> Iterator[Path]:
    """Yields the path to give keras.saving.load_model so that it reads the archive's
    `model.weights.h5` from disk instead of reading all of it into memory first.

    keras/src/saving/saving_lib.py (`_load_model_from_fileobj`) reads the whole weights file
    into an io.BytesIO whenever `is_memory_sufficient(model)` says it fits, while the model's
    new variables already hold as much: two copies of every weight at once. Else it extracts
    the file into a temporary directory beside the file it opened, and if anything in that
    fails (its bare `except:`), it reads the archive's member on the fly.
    - **Stored uncompressed** (Keras writes its archives with ZIP_STORED): the weights are
      read where they are, through Keras's on-the-fly path, which `is_memory_sufficient`
      raising takes it to, with h5py reading the member through a `FileWindow` onto the
      .keras file. `variables_filled_from_file` then maps each large weight from the .keras
      file itself: no copy in memory and none on disk (extracting wrote the weights' size to
      $TMPDIR: `register` wrote 2.06x the SavedModel's bytes instead of 1.06x).
    - **Compressed** (an archive zipped again): extracted, into a directory shipyard owns (a
      symlink to the model there is what Keras opens), so the extracted copy never lands
      beside the user's model and a killed run's copy is removed by the next load
      (files.locks.OwnedWorkdir). Read on the fly, it would be decompressed in Python:
      11.6 s against 3.9 s at 1 GiB (bench/README.md).
    `is_memory_sufficient` is private to Keras: without it, Keras decides as before.
    """
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        saving_lib = None
    original = getattr(saving_lib, "is_memory_sufficient", None)
    if original is None:
        yield path
        return
    member = weights_member(path)
    store_class = getattr(saving_lib, "H5IOStore", None)
    if member is not None and hasattr(store_class, "_get_h5_file"):
        yield from _read_in_place(saving_lib, store_class, path, member)
        return
    try:
        owned = OwnedWorkdir(LOAD_WORKDIR_PREFIX)
    except OSError:  # no usable $TMPDIR: Keras reads the weights as it would by itself
        yield path
        return
    link = owned.path / "model.keras"  # Keras wants the .keras suffix
    try:
        link.symlink_to(path.absolute())
        saving_lib.is_memory_sufficient = lambda model: False
        yield link
    finally:
        saving_lib.is_memory_sufficient = original
        owned.remove()


def _read_in_place(saving_lib, store_class, path: Path, member: tuple[int, int]
                   ) -> Iterator[Path]:
    """Keras on its read-on-the-fly path, with h5py reading the member through a window
    onto the .keras file: zipfile's own member file (Python 3.11) seeks by reading forward
    from the member's start, so HDF5's scattered metadata reads took a 4 GiB load from 19 s
    to 49 s."""
    import h5py

    def read_in_place(model):
        raise _ReadInPlace()

    original_open = store_class._get_h5_file

    def open_h5(store, path_or_io, mode=None):
        archive = getattr(store, "archive", None)
        opened = getattr(archive, "filename", None)
        if ((mode or store.mode) != "r" or not opened or str(path_or_io) != WEIGHTS_MEMBER
                or Path(opened).resolve() != path.resolve()):
            return original_open(store, path_or_io, mode)
        log.debug("%s: read in place from %s at %d", WEIGHTS_MEMBER, path, member[0])
        store.io_file = FileWindow(path, *member)  # H5IOStore.close() closes it
        return h5py.File(store.io_file, mode="r")

    original_sufficient = saving_lib.is_memory_sufficient
    saving_lib.is_memory_sufficient = read_in_place
    store_class._get_h5_file = open_h5
    try:
        yield path
    finally:
        saving_lib.is_memory_sufficient = original_sufficient
        store_class._get_h5_file = original_open


class FileWindow(io.RawIOBase):
    """A read-only, seekable file of `size` bytes: the part of `path` from `offset` on."""

    def __init__(self, path: Path, offset: int, size: int):
        super().__init__()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self._start, self._size, self._position = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), max(0, self._size - self._position))
        if wanted == 0:
            return 0
        self._file.seek(self._start + self._position)
        got = self._file.readinto(memoryview(buffer)[:wanted])
        self._position += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def weights_member(archive: Path, member: str = WEIGHTS_MEMBER) -> tuple[int, int] | None:
    """(offset, size) of `member`'s bytes in the zip file `archive` when it is stored whole
    (uncompressed, unencrypted), so that they can be read in place; else None."""
    try:
        with zipfile.ZipFile(archive) as opened:
            info = opened.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
        with open(archive, "rb") as file:  # the local header's own name and extra lengths
            file.seek(info.header_offset)
            header = file.read(ZIP_LOCAL_HEADER_BYTES)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    if len(header) != ZIP_LOCAL_HEADER_BYTES or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + ZIP_LOCAL_HEADER_BYTES + name_length + extra_length, info.file_size


@dataclass
class LoadReport:
    """What `variables_filled_from_file` did besides mapping and filling."""

    # Variables read while still pending, given their initializer's value before the read.
    filled_on_read: list[str] = field(default_factory=list)


@contextlib.contextmanager
def variables_filled_from_file(chunk_bytes: int = ASSIGN_CHUNK_BYTES) -> Iterator[LoadReport]:
    """While active, Keras variables (TensorFlow backend) are created without running their
    initializers, and large values are read from the weights file and written into their
    variables a chunk at a time.

    - **No initializer.** A variable starts as an uninitialized tensor of its shape
      (`tf.raw_ops.Empty`), which costs its own memory and nothing else. `load_model` assigns
      every saved variable its value from the file; on leaving, every variable that was
      created here and never assigned (a custom layer that does not load all of its state)
      gets its initializer's value after all, so no variable keeps uninitialized memory.
    - **Mapped, not read.** A large dataset of `model.weights.h5`, stored whole and
      uncompressed in a file on disk (as Keras writes them, and as `weights_read_from_disk`
      provides), is handed to `load_own_variables` as an array mapped from the file
      (copy-on-write: writing to it never changes the file) instead of one read into memory.
    - **In place.** `Variable.assign(array)` converts the array to a tensor (two copies of
      it, measured in bench/README.md) before copying that into the variable. Here an array
      of the variable's shape and dtype is written with `scatter_update`, `chunk_bytes` of
      rows at a time, straight into the variable's buffer; the pages of a mapped array are
      released as soon as they are written.

    - **Filled before it is read.** A custom layer may read its own variable while Keras
      rebuilds it, before the file's value is assigned (a constant derived in `build`). In
      Keras's own load it reads the initializer's value there, so here too: the first eager
      read of a variable still pending (its value, numpy(), a gather, an assign_add) fills it
      with its initializer's value first. Reads while a function is traced read nothing and
      fill nothing. The paths of the variables so filled are listed in the yielded
      `LoadReport`.

    Anything else (a tensor, another dtype, a distributed variable, a bfloat16 or compressed
    dataset) goes through Keras's own code, as does any assign inside a stateless scope.
    The replacements are process-wide: one load at a time makes them (a lock), and the
    exporter loads before anything else in the process creates Keras variables.

    What this does not see: a read inside a tf.function that a layer runs while it is built
    (the read happens in TensorFlow's kernel, not through the variable's Python methods).
    That is why the load never verifies itself: the export compares this load's answers with
    Keras's own load in another process (reference_process.py) and, where they differ, loads
    the model Keras's own way instead.
    """
    report = LoadReport()
    try:
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        from keras.src.backend.tensorflow.core import Variable
        from keras.src.saving.saving_lib import H5IOStore, safe_get_h5_dataset
        from tensorflow.python.eager import context
        from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable
    except ImportError:  # another backend, or a Keras that moved them: load as Keras would
        yield report
        return
    replaced = [(Variable, "_initialize_with_initializer"), (Variable, "assign"),
                (H5IOStore, "__getitem__")]
    # Every way a tf.Variable is read in eager mode goes through one of these (value(),
    # read_value(), numpy(), tensor conversion: _read_variable_op).
    reads = [(BaseResourceVariable, name) for name in READING_METHODS]
    if not all(hasattr(owner, name) for owner, name in replaced + reads):
        yield report
        return
    import tensorflow as tf

    original_assign, original_getitem = Variable.assign, H5IOStore.__getitem__
    # Variables created here with their initializer skipped, until something assigns them,
    # by id (variables are not hashable), with a weak reference (the id of one that died may
    # be reused).
    pending: dict[int, tuple[weakref.ref, Callable]] = {}
    # The tf.Variable inside each pending variable, by id -> the Keras variable's id.
    pending_backend: dict[int, int] = {}
    # Arrays mapped from the weights file, by id: (weak reference, mapping, array's offset).
    mapped: dict[int, tuple[weakref.ref, mmap.mmap, int]] = {}

    def initialize_empty(variable, initializer) -> None:
        variable._initialize(tf.raw_ops.Empty(shape=variable._shape, dtype=variable._dtype,
                                              init=False))
        pending[id(variable)] = (weakref.ref(variable), initializer)
        pending_backend[id(variable._value)] = id(variable)

    def fill_before_read(backend) -> None:
        """Gives a pending variable its initializer's value before its first eager read."""
        entry = pending.get(pending_backend.pop(id(backend), -1))
        variable = entry[0]() if entry else None
        if variable is None or variable._value is not backend:
            return
        del pending[id(variable)]
        backend.assign(entry[1](variable._shape, dtype=variable._dtype), read_value=False)
        report.filled_on_read.append(variable.path)
        log.debug("%s was read while pending: filled by its initializer first", variable.path)

    def guarded(original: Callable) -> Callable:
        def read(backend, *args, **kwargs):
            if pending_backend and context.executing_eagerly():
                fill_before_read(backend)
            return original(backend, *args, **kwargs)

        return read

    def getitem(store, key):
        dataset = safe_get_h5_dataset(store._h5_entry_group, key)  # Keras's own checks
        container = None
        if dataset.nbytes >= chunk_bytes:
            container = hdf5_container(dataset, getattr(store, "archive", None),
                                       str(getattr(store, "path_or_io", WEIGHTS_MEMBER)))
        found = mapped_dataset(dataset, chunk_bytes, container)
        if found is None:
            return original_getitem(store, key)
        array, mapping, offset = found
        log.debug("%s/%s: mapped from %s", store._h5_entry_path, key, container[0])
        mapped[id(array)] = (weakref.ref(array), mapping, offset)
        return array

    def assign(variable, value):
        # In a stateless scope (a symbolic call while the model is rebuilt), Keras records
        # the update and drops it: the variable is not filled, so it stays pending.
        if in_stateless_scope():
            return original_assign(variable, value)
        reference, mapping, offset = mapped.pop(id(value), (None, None, 0))
        if reference is None or reference() is not value:
            mapping = None
        if _writable_in_place(variable, value):
            _write_in_chunks(variable._value, value, chunk_bytes, mapping, offset)
            result = value
        else:
            result = original_assign(variable, value)
        pending.pop(id(variable), None)
        pending_backend.pop(id(variable._value), None)
        return result

    with _REPLACING:  # one load at a time replaces these; nested loads see their own
        # Own attributes are put back; inherited ones (Variable.assign is KerasVariable's)
        # are removed again, so that the classes are exactly as they were.
        saved = [(owner, name, owner.__dict__.get(name)) for owner, name in replaced + reads]
        Variable._initialize_with_initializer = initialize_empty
        Variable.assign = assign
        H5IOStore.__getitem__ = getitem
        for owner, name in reads:
            setattr(owner, name, guarded(getattr(owner, name)))
        try:
            yield report
        finally:
            for owner, name, own in saved:
                if own is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, own)
            mapped.clear()  # arrays still held (by a custom layer) keep their own mapping
    for reference, initializer in pending.values():
        variable = reference()
        if variable is None:
            continue
        log.debug("%s was not in the file: filled by its initializer", variable.path)
        variable._value.assign(initializer(variable._shape, dtype=variable._dtype))


def hdf5_container(dataset, archive=None, member: str = WEIGHTS_MEMBER
                   ) -> tuple[Path, int, int] | None:
    """(file, offset of the HDF5 file in it, its size) for the HDF5 file holding `dataset`:
    the file h5py opened, or the zip `archive` (a zipfile.ZipFile Keras reads `member` of on
    the fly) when `member` is stored uncompressed; else None."""
    if dataset.file.driver == "sec2":
        path = Path(dataset.file.filename)
        return path, 0, path.stat().st_size
    if archive is None or not getattr(archive, "filename", None):
        return None
    found = weights_member(Path(archive.filename), member)
    return None if found is None else (Path(archive.filename), *found)


def mapped_dataset(dataset, min_bytes: int, container: tuple[Path, int, int] | None):
    """(array, mapping, offset of the array in the mapping) for an HDF5 dataset of at least
    `min_bytes` whose values lie in `container` (see hdf5_container) as one run of native
    integers or floats (what `_writable_in_place` takes); else None.

    h5py gives the run's address in the HDF5 file (`get_offset`) for a contiguous, unfiltered
    dataset. A bfloat16 dataset (Keras marks it with a "dtype" attribute) is left to Keras,
    which converts it."""
    import numpy as np

    dtype = dataset.dtype
    if (container is None or dataset.nbytes < max(min_bytes, 1) or dtype.kind not in "iuf"
            or not dtype.isnative or "dtype" in dataset.attrs or dataset.chunks is not None
            or dataset.compression is not None or dataset.file.userblock_size != 0):
        return None
    path, base, size = container
    inside = dataset.id.get_offset()
    if inside is None or inside + dataset.nbytes > size:
        return None
    offset = base + inside
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), offset + dataset.nbytes - start,
                            access=mmap.ACCESS_COPY, offset=start)
    array = np.frombuffer(mapping, dtype=dtype, count=dataset.size,
                          offset=offset - start).reshape(dataset.shape)
    return array, mapping, offset - start


def _writable_in_place(variable, value) -> bool:
    """A numeric array of the variable's own shape and dtype, and a plain TensorFlow variable
    (strings, booleans and distributed variables are left to Keras)."""
    import numpy as np
    import tensorflow as tf

    if not isinstance(variable._value, tf.Variable) or tf.distribute.has_strategy():
        return False
    dtype = variable._value.dtype
    return (isinstance(value, np.ndarray) and value.ndim >= 1 and value.size > 0
            and (dtype.is_floating or dtype.is_integer) and value.dtype == dtype.as_numpy_dtype
            and tuple(value.shape) == tuple(variable.shape))


def _write_in_chunks(target, value, chunk_bytes: int, mapping: mmap.mmap | None = None,
                     offset: int = 0) -> None:
    """Writes `value` into the tf.Variable `target` along its first axis: `scatter_update`
    writes into the variable's own buffer, so each step costs one chunk of memory. If `value`
    is mapped from a file (at `offset` in `mapping`), the pages written so far are released
    after each step: the file still holds them."""
    import tensorflow as tf

    row_bytes = max(1, value.nbytes // value.shape[0])
    rows = max(1, chunk_bytes // row_bytes)
    released = 0
    for start in range(0, value.shape[0], rows):
        stop = min(start + rows, value.shape[0])
        target.scatter_update(tf.IndexedSlices(value[start:stop], tf.range(start, stop)))
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            written = offset + stop * row_bytes
            written -= written % mmap.PAGESIZE
            if written > released:
                mapping.madvise(mmap.MADV_DONTNEED, released, written - released)
                released = written
