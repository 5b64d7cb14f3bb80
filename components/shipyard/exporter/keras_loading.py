"""Loading a `.keras` file with one copy of each weight in memory, not three or four.

`keras.saving.load_model` builds the model (each variable filled by its initializer), then
assigns each variable the value read from the file. Along the way, for every weight, it holds:
- the whole `model.weights.h5` in an `io.BytesIO`, when Keras thinks it fits in memory;
- the initializer's temporaries (a `GlorotUniform` kernel is three tensors the size of the
  variable), which TensorFlow's CPU allocator keeps for reuse once freed;
- the value read from the file, and two more tensor copies made converting it for `assign`.

At 4 GiB of weights the exporting process peaked at the weights plus 2.97 GiB, all of it in
`load_model` (bench/README.md). Each context manager here removes one of those copies by
changing a private piece of Keras for the duration of one load; when that piece is not where
this Keras version is expected to have it, Keras loads as it would by itself.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from pathlib import Path
from typing import Callable, Iterator

from shipyard.files.locks import OwnedWorkdir

log = logging.getLogger(__name__)

# Where a .keras file's weights are extracted while it loads (see weights_read_from_disk).
LOAD_WORKDIR_PREFIX = "shipyard-load-"
# Large values are written into their variable this many bytes at a time (see
# variables_filled_from_file): small enough to add nothing to the peak, large enough that the
# per-chunk op overhead is lost in the copy (16 MiB: 2 GiB of weights load in 8.8 s, as fast
# as with no chunking).
ASSIGN_CHUNK_BYTES = 16 << 20


@contextlib.contextmanager
def weights_read_from_disk(path: Path) -> Iterator[Path]:
    """Yields the path to give keras.saving.load_model so that it reads the archive's
    model.weights.h5 from an extracted file instead of reading all of it into memory first.

    keras/src/saving/saving_lib.py reads the whole weights file into an io.BytesIO whenever
    `is_memory_sufficient(model)` says it fits, while the model's new variables already hold
    as much: two copies of every weight at once. Its other path extracts the file into a
    temporary directory beside the file it opened (and reads the zip on the fly if it cannot).
    At 1 GiB of weights, in a fresh process, that took load_model's peak from 3352 to 2328 MiB
    and its time from 4.5 to 3.9 s (bench/README.md). Keras opens a symlink to the model in
    a directory shipyard owns, so the extracted copy never lands beside the user's model and
    a killed run's copy is removed by the next load (files.locks.OwnedWorkdir).
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


@contextlib.contextmanager
def variables_filled_from_file(chunk_bytes: int = ASSIGN_CHUNK_BYTES) -> Iterator[None]:
    """While active, Keras variables (TensorFlow backend) are created without running their
    initializers, and large values assigned to them are written in place, a chunk at a time.

    - **No initializer.** A variable starts as an uninitialized tensor of its shape
      (`tf.raw_ops.Empty`), which costs its own memory and nothing else. `load_model` assigns
      every saved variable its value from the file; on leaving, every variable that was
      created here and never assigned (a custom layer that does not load all of its state)
      gets its initializer's value after all, so no variable keeps uninitialized memory.
    - **In place.** `Variable.assign(array)` converts the array to a tensor (two copies of
      it, measured in bench/README.md) before copying that into the variable. Here an array
      of the variable's shape and dtype is written with `scatter_update`, `chunk_bytes` of
      rows at a time, straight into the variable's buffer. Anything else (a tensor, another
      dtype, a distributed variable) goes through Keras's own `assign`.

    Keras's loading runs on this thread; other threads create no Keras variables meanwhile.
    """
    try:
        from keras.src.backend.tensorflow.core import Variable
    except ImportError:  # another backend, or a Keras that moved it: load as Keras would
        yield
        return
    original_initialize = getattr(Variable, "_initialize_with_initializer", None)
    original_assign = getattr(Variable, "assign", None)
    if original_initialize is None or original_assign is None:
        yield
        return
    import numpy as np
    import tensorflow as tf

    # Variables created here with their initializer skipped, until something assigns them,
    # by id (variables are not hashable), with a weak reference (the id of one that died may
    # be reused).
    pending: dict[int, tuple[weakref.ref, Callable]] = {}

    def initialize_empty(variable, initializer) -> None:
        variable._initialize(tf.raw_ops.Empty(shape=variable._shape, dtype=variable._dtype,
                                              init=False))
        pending[id(variable)] = (weakref.ref(variable), initializer)

    def assign(variable, value):
        if _writable_in_place(variable, value, np, tf):
            _write_in_chunks(variable._value, value, chunk_bytes, tf)
            result = value
        else:
            result = original_assign(variable, value)
        pending.pop(id(variable), None)
        return result

    Variable._initialize_with_initializer = initialize_empty
    Variable.assign = assign
    try:
        yield
    finally:
        Variable._initialize_with_initializer = original_initialize
        Variable.assign = original_assign
    for reference, initializer in pending.values():
        variable = reference()
        if variable is None:
            continue
        log.debug("%s was not in the file: filled by its initializer", variable.path)
        variable._value.assign(initializer(variable._shape, dtype=variable._dtype))


def _writable_in_place(variable, value, np, tf) -> bool:
    """A numeric array of the variable's own shape and dtype, and a plain TensorFlow variable
    (strings, booleans and distributed variables are left to Keras)."""
    if not isinstance(variable._value, tf.Variable) or tf.distribute.has_strategy():
        return False
    dtype = variable._value.dtype
    return (isinstance(value, np.ndarray) and value.ndim >= 1 and value.size > 0
            and (dtype.is_floating or dtype.is_integer) and value.dtype == dtype.as_numpy_dtype
            and tuple(value.shape) == tuple(variable.shape))


def _write_in_chunks(target, value, chunk_bytes: int, tf) -> None:
    """Writes `value` into the tf.Variable `target` along its first axis: `scatter_update`
    writes into the variable's own buffer, so each step costs one chunk of memory."""
    row_bytes = max(1, value.nbytes // value.shape[0])
    rows = max(1, chunk_bytes // row_bytes)
    for start in range(0, value.shape[0], rows):
        stop = min(start + rows, value.shape[0])
        target.scatter_update(tf.IndexedSlices(value[start:stop], tf.range(start, stop)))
