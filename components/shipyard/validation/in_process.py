"""The in-process runner: the validation's stages (stages.py) driven by a plain loop in this
process, with TensorFlow reading the files. `validate`'s default runner.

Why not Beam's DirectRunner by default: on one machine Beam adds a fixed cost that no input
size in a scheduled validation amortizes (its import, about 0.7 s here, and building and
running the pipeline, about 0.7 s more) and a per-batch cost of its own
(bench/validate.py). This loop runs the same stages, the same vectorized mapping, the same
model calls and the same statistics, and reads the way a tf.data pipeline does: each
TFRecord file through `tf.data.TFRecordDataset`, batched, with the next batch read by
TensorFlow's threads while the models run on this one. The Beam pipeline (pipeline.py) stays
the way to run on many workers (`--runner`); tests check that both find the same.

Files are read through TensorFlow's file systems (`tf.io.gfile`), as the SavedModels
themselves are: local paths, gs://, and any scheme a TensorFlow file-system plugin adds.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import queue
import re
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from shipyard.core.errors import UsageError
from shipyard.validation import stats as stats_lib
from shipyard.validation.runners import IN_PROCESS
from shipyard.validation.stages import (
    BatchMapper,
    LoadedModels,
    RecordMapper,
    ValidationJob,
    count,
    map_batch,
    run_models,
)

# The unmappable examples listed in the result: the first ones met (the Beam pipeline keeps a
# random sample of as many).
KEPT_ERRORS = 5
# Compression by file name, as Beam's ReadFromTFRecord and ReadFromText read it
# (CompressionTypes.AUTO). TFRecord readers in TensorFlow know GZIP and ZLIB only.
_TFRECORD_COMPRESSION = {".gz": "GZIP", ".deflate": "ZLIB", ".zlib": "ZLIB"}
# Text, as Beam's ReadFromText decompresses it (and .zlib, as TFRecord files above).
_TEXT_COMPRESSION: dict[str, Callable[[Any], Any]] = {
    ".gz": lambda f: gzip.GzipFile(fileobj=f), ".bz2": lambda f: bz2.BZ2File(f),
    ".xz": lambda f: lzma.LZMAFile(f), ".lzma": lambda f: lzma.LZMAFile(f),
    ".deflate": lambda f: _ZlibReader(f), ".zlib": lambda f: _ZlibReader(f),
    ".zst": lambda f: _zstd_reader(f), ".zstd": lambda f: _zstd_reader(f)}
# Text is read in chunks of this size and split at \n here: TensorFlow's GFile.readline drops
# every \r of a line, where ReadFromText drops only the one before the \n.
_CHUNK = 1 << 20
_GLOB = re.compile(r"[*?[]")


def matching_files(pattern: str) -> list[str]:
    """The files PATTERN (a path or glob, local or any URL TensorFlow reads) matches, sorted,
    as Beam's FileSystems.match matches them: `*` within a directory, `**` across
    directories, a trailing / for a directory's files, directories never; UsageError (param
    `examples`) when none does or TensorFlow cannot list them."""
    import tensorflow as tf

    if pattern.endswith("/"):
        pattern += "*"
    try:
        if "**" in pattern:  # TensorFlow's glob takes ** for *: listed and matched here
            matched = _recursive_match(pattern)
        else:
            matched = [path for path in tf.io.gfile.glob(pattern)
                       if not tf.io.gfile.isdir(path)]
        directory = not matched and not _GLOB.search(pattern) and tf.io.gfile.isdir(pattern)
    except (tf.errors.OpError, ValueError) as err:  # an unknown scheme, a missing bucket
        raise UsageError(f"examples {pattern}: cannot list matching files: {_reason(err)}; "
                         f"the {IN_PROCESS} runner reads what TensorFlow's file systems read "
                         "(local paths, gs://); for other URLs pass --runner DirectRunner, "
                         "which reads through Beam's", param="examples") from None
    if directory:
        raise UsageError(f"examples {pattern}: a directory, not a file; pass '{pattern}/*' "
                         f"for its files, or '{pattern}/**' with its subdirectories'",
                         param="examples")
    if not matched:
        raise UsageError(f"examples {pattern}: no file matches; check the path or glob",
                         param="examples")
    return sorted(matched)


def _recursive_match(pattern: str) -> list[str]:
    """The files under the pattern's fixed directory whose paths match it, with Beam's
    translation of a pattern (FileSystem.translate_pattern): `**` any characters, `*` any
    but /, `?` one, `[...]` a class."""
    import tensorflow as tf

    fixed = pattern[:_GLOB.search(pattern).start()]  # type: ignore[union-attr]  (** in it)
    top = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
    regex = re.compile(_translate(pattern), re.S)
    found = []
    for directory, _, files in tf.io.gfile.walk(top):
        for name in files:
            path = f"{directory.rstrip('/')}/{name}"
            if regex.fullmatch(path if "/" in fixed else path.removeprefix("./")):
                found.append(path if "/" in fixed else path.removeprefix("./"))
    return found


def _translate(pattern: str) -> str:
    """A glob -> a regular expression for whole paths, as Beam's translate_pattern reads it."""
    parts, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if pattern[i:i + 1] == "*":
                parts.append(".*")
                i += 1
            else:
                parts.append("[^/\\\\]*")
        elif c == "?":
            parts.append(".")
        elif c == "[":
            j = i + (pattern[i:i + 1] == "!")
            j += pattern[j:j + 1] == "]"
            j = pattern.find("]", j)
            if j < 0:
                parts.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            parts.append(f"[{body}]")
        else:
            parts.append(re.escape(c))
    return "".join(parts)


def first_line(path: str) -> str:
    """A text file's first line, without its line ending (a CSV file's header)."""
    with _open_text(path) as f:
        for line in _lines(f, path):
            return _decoded(line.rstrip(b"\r"), path, 1)
    return ""


def run_in_process(job: ValidationJob, files: list[str], *, vectorized: bool = True
                   ) -> dict[str, Any]:
    """Runs the validation on FILES in this process; returns what `pipeline.run_pipeline`
    returns: {"stats", "examples", "unmappable", "unmappable_examples"}."""
    record_mapper = RecordMapper(job)
    batch_mapper = BatchMapper(job).map if vectorized else None
    # Reading starts first, so that the first batches are read while the models load.
    with contextlib.closing(_ReadAhead(map_batch(records, batch_mapper, record_mapper)
                                       for records in _raw_batches(job, files))) as ahead:
        return _run(job, LoadedModels(job), ahead)


def _run(job: ValidationJob, models: LoadedModels, mapped_batches: Iterable[Any]
         ) -> dict[str, Any]:
    examples, stats, unmappable, listed = 0, {}, 0, []
    reservoir = _Reservoir(job.sample) if job.sample is not None else None
    for mapped, bad in mapped_batches:
        unmappable += len(bad)
        listed.extend(bad[:KEPT_ERRORS - len(listed)])
        if mapped is None:
            continue
        if reservoir is not None:
            reservoir.add(mapped)
            continue
        examples += count(mapped)
        stats = stats_lib.merge(stats, run_models(models, job, mapped))
    if reservoir is not None:
        for mapped in reservoir.batches(job.max_batch_size):
            examples += count(mapped)
            stats = stats_lib.merge(stats, run_models(models, job, mapped))
    return {"stats": stats, "examples": examples, "unmappable": unmappable,
            "unmappable_examples": sorted(listed)}


class _ReadAhead:
    """ITEMS, produced by another thread up to DEPTH ahead of the consumer, from the moment
    it is made: the next batches are read and mapped (TensorFlow ops, which release the GIL)
    while the caller loads the models and runs them on the current batch. An exception in
    the producer is raised to the consumer, in order. `close()` stops the producer."""

    _DONE = object()

    def __init__(self, items: Iterator[Any], depth: int = 4):
        self._items = items
        self._handoff: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, daemon=True,
                                          name="shipyard-validate-read")
        self._producer.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._handoff.put((item, None))
        except BaseException as err:  # handed to the consumer, raised there
            self._handoff.put((None, err))
            return
        self._handoff.put((self._DONE, None))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, err = self._handoff.get()
            if err is not None:
                raise err
            if item is self._DONE:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._handoff.get_nowait()
            except queue.Empty:
                self._producer.join(0.05)


def _raw_batches(job: ValidationJob, files: list[str]) -> Iterator[Any]:
    """Batches of raw records, file after file: TFRecord records as a numpy array of bytes,
    CSV and JSONL lines as lists of str (a CSV file's header line skipped)."""
    for path in files:
        if job.fmt == "tfrecord":
            yield from _tfrecord_batches(path, job.max_batch_size)
        else:
            yield from _line_batches(path, job.max_batch_size, skip=job.fmt == "csv")


def _tfrecord_batches(path: str, size: int) -> Iterator[np.ndarray]:
    import tensorflow as tf

    compression = _compression(path, _TFRECORD_COMPRESSION, "TFRecord")
    # prefetch: TensorFlow's threads read (and check the CRCs of) the next batch while this
    # thread maps and runs the current one.
    dataset = tf.data.TFRecordDataset(path, compression_type=compression).batch(size).prefetch(1)
    batches = iter(dataset)
    while True:
        try:
            records = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as err:  # a truncated file, a bad CRC, not a TFRecord
            raise UsageError(f"examples: {path} is not a readable TFRecord file: {_reason(err)}",
                             param="examples") from None
        yield records.numpy()


def _line_batches(path: str, size: int, *, skip: bool) -> Iterator[list[str]]:
    """Lines as Beam's ReadFromText reads them: split at \\n, a \\r just before it dropped
    (any other \\r kept), UTF-8; a last line without \\n as it is."""
    lines: list[str] = []
    with _open_text(path) as f:
        for number, line in enumerate(_lines(f, path), start=1):
            if skip and number == 1:
                continue
            lines.append(_decoded(line, path, number))
            if len(lines) == size:
                yield lines
                lines = []
    if lines:
        yield lines


def _lines(f: Any, path: str) -> Iterator[bytes]:
    rest = b""
    while chunk := _read(f, path):
        *complete, rest = (rest + chunk).split(b"\n")
        for line in complete:
            yield line[:-1] if line.endswith(b"\r") else line
    if rest:
        yield rest


def _read(f: Any, path: str) -> bytes:
    """The next chunk of the file; a UsageError naming it when it does not decompress."""
    suffix = _suffix(path)
    if suffix not in _TEXT_COMPRESSION:
        return f.read(_CHUNK)
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error)
    if suffix in (".zst", ".zstd"):
        import zstandard

        errors += (zstandard.ZstdError,)
    try:
        return f.read(_CHUNK)
    except errors as err:  # not compressed so, or cut short
        raise UsageError(f"examples: {path} is not a readable {suffix[1:]} file ({err}); "
                         f"check the file, or rename it without {suffix} if it is not "
                         "compressed", param="examples") from None


def _decoded(line: bytes, path: str, number: int) -> str:
    try:
        return line.decode()
    except UnicodeDecodeError as err:
        raise UsageError(f"examples: {path} line {number} is not UTF-8 text ({err.reason} at "
                         f"byte {err.start}); save the file as UTF-8, the encoding examples "
                         "are read in (on Beam too)", param="examples") from None


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[Any]:
    """The file's bytes, decompressed by its suffix; both files closed after."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as raw:
        opener = _TEXT_COMPRESSION.get(_suffix(path))
        if opener is None:
            yield raw
            return
        with contextlib.closing(opener(raw)) as f:
            yield f


class _ZlibReader:
    """A zlib stream (Beam's DEFLATE: zlib.decompressobj()'s format) read as a file."""

    def __init__(self, f: Any):
        self._f = f
        self._decompressor = zlib.decompressobj()

    def read(self, size: int) -> bytes:
        while not self._decompressor.eof:
            compressed = self._f.read(size)
            if not compressed:
                return self._decompressor.flush()
            data = self._decompressor.decompress(compressed)
            if data:
                return data
        return b""

    def close(self) -> None:
        pass


def _zstd_reader(f: Any) -> Any:
    import zstandard  # a dependency of Beam's, which reads .zst with it

    # The window Beam allows (apache_beam/io/filesystem.py), frames one after another.
    return zstandard.ZstdDecompressor(max_window_size=2147483648).stream_reader(
        f, read_across_frames=True, closefd=False)


def _compression(path: str, known: dict[str, str], kind: str) -> str | None:
    suffix = _suffix(path)
    if suffix in known:
        return known[suffix]
    if suffix in {".bz2", ".xz", ".lzma", ".zst", ".zstd", ".snappy"}:
        raise UsageError(f"examples: {path}: the {IN_PROCESS} runner reads {kind} files "
                         f"uncompressed or compressed as {', '.join(sorted(known))}; pass "
                         "--runner DirectRunner for Beam's other compressions",
                         param="examples")
    return None


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _reason(err: Exception) -> str:
    return getattr(err, "message", None) or str(err)


class _Reservoir:
    """A uniform sample of `size` examples from a stream of batches (reservoir sampling,
    Vitter's algorithm R, a batch at a time): what Beam's Sample.FixedSizeGlobally gives the
    pipeline. Holds `size` examples, never the stream."""

    def __init__(self, size: int, rng: np.random.Generator | None = None):
        self.size = size
        self.seen = 0
        self.rows: dict[str, np.ndarray] | None = None
        self._rng = rng or np.random.default_rng()

    def add(self, inputs: dict[str, np.ndarray]) -> None:
        n = count(inputs)
        self._grow(inputs, min(self.seen + n, self.size))
        position = np.arange(self.seen, self.seen + n)
        # Example t (0-based) fills slot t while there is room; after that it replaces a
        # random slot with probability size / (t + 1).
        slot = np.where(position < self.size, position,
                        self._rng.integers(0, position + 1))
        taken = np.flatnonzero(slot < self.size)
        # Two examples of one batch may draw the same slot: the later one wins, as it would
        # one example at a time.
        last_first = taken[::-1]
        _, first_of_each = np.unique(slot[last_first], return_index=True)
        chosen = last_first[first_of_each]
        assert self.rows is not None
        for name, values in inputs.items():
            self.rows[name][slot[chosen]] = values[chosen]
        self.seen += n

    def _grow(self, inputs: dict[str, np.ndarray], needed: int) -> None:
        """Room for NEEDED rows: doubled as they come, never above `size`. A K far above the
        input (every example, once) holds the input, not K rows."""
        held = 0 if self.rows is None else count(self.rows)
        if needed <= held:
            return
        room = min(self.size, max(needed, 2 * held))
        grown = {name: np.empty((room, *values.shape[1:]), values.dtype)
                 for name, values in inputs.items()}
        for name, values in (self.rows or {}).items():
            grown[name][:held] = values
        self.rows = grown

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        kept = min(self.seen, self.size)
        for start in range(0, kept, size):
            assert self.rows is not None
            yield {name: values[start:min(start + size, kept)]
                   for name, values in self.rows.items()}
