"""Manifest files, checksums and the content fingerprint (no TensorFlow)."""

from __future__ import annotations

from shipyard.manifest import (
    MANIFEST_PATH, checksum_mismatches, fingerprint, list_files, read_manifest, write_manifest,
)

SPEC = {"endpoints": [{"name": "serve"}]}
SIGNATURES = {"serve": {"inputs": {}, "outputs": {}, "method_name": "m"}}


def make_version(root, graph: bytes, weights: bytes):
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(graph)
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    return root


def test_fingerprint_ignores_the_unstable_graph_but_not_weights_spec_or_signatures(tmp_path):
    a = list_files(make_version(tmp_path / "a", b"graph-1", b"weights"))
    b = list_files(make_version(tmp_path / "b", b"graph-2", b"weights"))
    c = list_files(make_version(tmp_path / "c", b"graph-1", b"other weights"))
    assert fingerprint(a, SPEC, SIGNATURES) == fingerprint(b, SPEC, SIGNATURES)
    assert fingerprint(a, SPEC, SIGNATURES) != fingerprint(c, SPEC, SIGNATURES)
    assert fingerprint(a, SPEC, SIGNATURES) != fingerprint(a, {"endpoints": []}, SIGNATURES)
    assert fingerprint(a, SPEC, SIGNATURES) != fingerprint(a, SPEC, {})
    assert fingerprint(a, SPEC, SIGNATURES).startswith("sha256:")


def test_manifest_round_trip_and_checksums(tmp_path):
    root = make_version(tmp_path / "v", b"graph", b"weights")
    files = list_files(root)
    assert [f["path"] for f in files] == ["saved_model.pb", "variables/variables.data-00000-of-00001"]
    write_manifest(root, {"files": files})
    assert [f["path"] for f in list_files(root)] == [f["path"] for f in files]  # not itself
    assert read_manifest(root)["files"] == files
    assert (root / MANIFEST_PATH).is_file()
    assert checksum_mismatches(root, read_manifest(root)) == []

    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"weightz")
    (root / "saved_model.pb").unlink()
    assert checksum_mismatches(root, read_manifest(root)) == [
        "saved_model.pb: missing",
        "variables/variables.data-00000-of-00001: content differs from shipyard.json"]
    assert read_manifest(tmp_path / "nothing") is None
