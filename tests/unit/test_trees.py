"""files.trees: a published version placed at an artifact's location, local or in an object
store (fsspec's in-memory store stands in for gs:// and s3://)."""

from __future__ import annotations

import os

import fsspec

from shipyard.files.trees import local_tree, materialize


def write_version(root):
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    return root


def stored(url: str) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(url)
    return {f[len(path) + 1:]: fs.cat_file(f) for f in fs.find(path)}


EXPECTED = {"saved_model.pb": b"graph", "variables/variables.index": b"index"}


def test_local_to_local_is_hard_links(tmp_path):
    version = write_version(tmp_path / "repo" / "m" / "1")
    materialize(str(version), tmp_path / "artifact")
    assert os.path.samefile(version / "saved_model.pb", tmp_path / "artifact" / "saved_model.pb")
    assert (tmp_path / "artifact" / "variables" / "variables.index").read_bytes() == b"index"


def test_to_and_between_object_stores(tmp_path):
    version = write_version(tmp_path / "repo" / "m" / "1")
    base = f"memory://trees-{tmp_path.name}"
    materialize(str(version), f"{base}/uploaded")  # a local repository, a remote artifact
    assert stored(f"{base}/uploaded") == EXPECTED
    materialize(f"{base}/uploaded", f"{base}/copied")  # a remote repository and artifact
    assert stored(f"{base}/copied") == EXPECTED
    materialize(f"{base}/copied", tmp_path / "downloaded")  # a remote repository, local artifact
    assert (tmp_path / "downloaded" / "variables" / "variables.index").read_bytes() == b"index"


def test_a_remote_tree_is_downloaded_for_the_block_and_removed_after(tmp_path):
    base = f"memory://trees-{tmp_path.name}"
    materialize(str(write_version(tmp_path / "v")), f"{base}/model")
    with local_tree(f"{base}/model") as local:
        assert (local / "saved_model.pb").read_bytes() == b"graph"
    assert not local.exists()
    with local_tree(str(tmp_path / "v")) as same:  # a local path is used where it is
        assert same == tmp_path / "v"
    assert (tmp_path / "v").is_dir()
