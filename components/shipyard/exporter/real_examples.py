"""Real serialized tf.Examples for verification (`--examples`): read from TFRecord files.

Pure Python over fsspec, so any filesystem fsspec knows works (local paths, gs://, s3://,
memory://), and a file, a glob or a directory (such as ExampleGen's `Split-eval/`) may be
given. Gzip is inferred from the `.gz` suffix, as ExampleGen names its files. The TFRecord
framing is read as TensorFlow writes it: uint64 length, uint32 masked CRC of the length, the
data, uint32 masked CRC of the data (the CRCs are not checked here: the record's proto parse
in the model is the check that matters).
"""

from __future__ import annotations

import struct

from shipyard.core.errors import UsageError

DEFAULT_LIMIT = 16
_MAX_RECORD_BYTES = 2**31  # a serialized proto is at most 2 GiB


def read_examples(location: str, limit: int = DEFAULT_LIMIT) -> tuple[bytes, ...]:
    """Up to `limit` records from the TFRecord file(s) at `location`, in file order."""
    import fsspec

    if limit < 1:
        raise UsageError(f"examples_limit: expected at least 1, got {limit}",
                         param="examples_limit")
    files = _files(location)
    records: list[bytes] = []
    for path in files:
        try:
            with fsspec.open(path, "rb", compression="infer") as stream:
                records.extend(_records(stream, limit - len(records), path))
        except OSError as err:
            raise UsageError(f"examples {location}: cannot read {path}: {err}",
                             param="examples") from None
        if len(records) >= limit:
            break
    if not records:
        raise UsageError(f"examples {location}: the TFRecord file(s) hold no records; pass "
                         "TFRecord files of serialized tf.Examples", param="examples")
    return tuple(records)


def _files(location: str) -> list[str]:
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(location)
    found: list[str] = []
    for path in paths:
        if fs.isdir(path):
            found.extend(sorted(p for p in fs.find(path)
                                if not p.rsplit("/", 1)[-1].startswith(".")))
        elif fs.exists(path):
            found.append(path)
    if not found:
        raise UsageError(f"examples {location}: no such file, directory or match; pass a "
                         "TFRecord file, a glob or a directory of them (e.g. ExampleGen's "
                         "Split-eval/)", param="examples")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [p if protocol in ("file", "local") else f"{protocol}://{p.split('://')[-1]}"
            for p in found]


def _records(stream, wanted: int, path: str) -> list[bytes]:
    records = []
    while len(records) < wanted:
        header = stream.read(12)
        if not header:
            break
        if len(header) < 12:
            raise UsageError(f"examples: {path} is not a complete TFRecord file (a record "
                             "header is cut short); pass TFRecord files, gzipped as `.gz`",
                             param="examples")
        (length,) = struct.unpack("<Q", header[:8])
        if length > _MAX_RECORD_BYTES:  # not TFRecord framing (e.g. text): never allocate it
            raise UsageError(f"examples: {path} is not a complete TFRecord file (record "
                             f"{len(records)} claims {length} bytes); pass TFRecord files, "
                             "gzipped as `.gz`", param="examples")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) != length or len(footer) != 4:
            raise UsageError(f"examples: {path} is not a complete TFRecord file (record "
                             f"{len(records)} is cut short); pass TFRecord files, gzipped "
                             "as `.gz`", param="examples")
        records.append(data)
    return records
