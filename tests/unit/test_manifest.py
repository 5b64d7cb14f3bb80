"""Manifest files, checksums and the content fingerprint (no TensorFlow)."""

from __future__ import annotations

import threading

import pytest
from support.manifests import bare_manifest

from shipyard.core.manifest import (
    MANIFEST_PATH,
    HashingStopped,
    checksum_mismatches,
    fingerprint,
    list_files,
    read_manifest,
    write_manifest,
)

SPEC = {"endpoints": [{"name": "serve"}]}
SIGNATURES = {"serve": {"inputs": {}, "outputs": {}, "method_name": "m"}}


def make_version(root, graph: bytes, weights: bytes):
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(graph)
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    return root


def test_fingerprint_hashes_content_not_unstable_files(tmp_path):
    a = list_files(make_version(tmp_path / "a", b"graph-1", b"checkpoint layout 1"))
    b = list_files(make_version(tmp_path / "b", b"graph-2", b"checkpoint layout 2"))
    weights, vocab = ["d1", "d2"], [["red", "blue"]]
    base = fingerprint(a, SPEC, SIGNATURES, weights, vocab, "arch")
    assert base.startswith("sha256:")
    # saved_model.pb and the variables files vary between exports of one model; order of
    # variable digests too.
    assert fingerprint(b, SPEC, SIGNATURES, ["d2", "d1"], vocab, "arch") == base
    assert fingerprint(a, SPEC, SIGNATURES, ["d1", "d3"], vocab, "arch") != base
    assert fingerprint(a, SPEC, SIGNATURES, weights, [["red", "green"]], "arch") != base
    assert fingerprint(a, {"endpoints": []}, SIGNATURES, weights, vocab, "arch") != base
    assert fingerprint(a, SPEC, {}, weights, vocab, "arch") != base
    assert fingerprint(a, SPEC, SIGNATURES, weights, vocab, "other arch") != base
    (tmp_path / "a" / "assets").mkdir()
    (tmp_path / "a" / "assets" / "vocab.txt").write_text("x")
    assert fingerprint(list_files(tmp_path / "a"), SPEC, SIGNATURES, weights, vocab, "arch") != base


def test_manifest_round_trip_and_checksums(tmp_path):
    root = make_version(tmp_path / "v", b"graph", b"weights")
    files = list_files(root)
    assert [f["path"] for f in files] == ["saved_model.pb", "variables/variables.data-00000-of-00001"]
    write_manifest(root, bare_manifest(files))
    assert [f["path"] for f in list_files(root)] == [f["path"] for f in files]  # not itself
    assert read_manifest(root).files == files
    assert (root / MANIFEST_PATH).is_file()
    assert checksum_mismatches(root, read_manifest(root)) == []

    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"weightz")
    (root / "saved_model.pb").unlink()
    assert checksum_mismatches(root, read_manifest(root)) == [
        "saved_model.pb: missing",
        "variables/variables.data-00000-of-00001: content differs from shipyard.json"]
    assert read_manifest(tmp_path / "nothing") is None


def test_hashing_stops_when_asked(tmp_path):
    """An export that failed sets the event: the hashing threads end at their next chunk."""
    root = make_version(tmp_path / "v", b"graph", b"checkpoint")
    stop = threading.Event()
    assert list_files(root, stop) == list_files(root)  # not set: the same result

    stop.set()
    with pytest.raises(HashingStopped, match=r"stopped hashing .*: the export already failed"):
        list_files(root, stop)


def test_a_failing_block_sets_the_stop_event():
    from shipyard.steps.export import _stopped_on_failure

    stop = threading.Event()
    with _stopped_on_failure(stop):
        pass
    assert not stop.is_set()
    with pytest.raises(RuntimeError, match="verification failed"):
        with _stopped_on_failure(stop):
            raise RuntimeError("verification failed")
    assert stop.is_set()
