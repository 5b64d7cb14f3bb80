"""Object-store repositories through fsspec's memory:// filesystem: publish by upload and
checksum check. (A real export and push on one: integration/test_remote_repository.py.)"""

from __future__ import annotations

import fsspec
import pytest
from support.manifests import bare_manifest

from shipyard.core.errors import ShipyardError, UsageError
from shipyard.core.manifest import list_files, write_manifest
from shipyard.repository import ObjectStoreRepository, open_repository


def staged_version(repo: ObjectStoreRepository, name: str, payload: bytes):
    staging = repo.create_staging(name)
    (staging.path / "variables").mkdir()
    (staging.path / "saved_model.pb").write_bytes(payload)
    (staging.path / "variables" / "variables.index").write_bytes(b"index")
    write_manifest(staging.path, bare_manifest(list_files(staging.path), name))
    return staging


def test_urls_open_an_object_store_repository_and_paths_a_local_one(tmp_path):
    assert isinstance(open_repository("memory://b/models"), ObjectStoreRepository)
    assert open_repository(str(tmp_path)).location == str(tmp_path)
    with pytest.raises(UsageError, match=r"^repo nosuch://x: nosuch:// is not a storage URL "
                                         r"scheme; give a local path, a file:// URL, or an "
                                         r"object store's URL such as gs://bucket/models"):
        open_repository("nosuch://x")
    # A filesystem registered in-process (a plugin, a test double) is a storage scheme too.
    from fsspec.implementations.memory import MemoryFileSystem

    fsspec.register_implementation("shipyardtest", MemoryFileSystem, clobber=True)
    assert isinstance(open_repository("shipyardtest://b/models"), ObjectStoreRepository)
    # A scheme fsspec knows whose backend package is not installed here (adlfs).
    with pytest.raises(ShipyardError, match=r"^repo abfs://b/x: no filesystem for this URL "
                                            r"\(.*adlfs.*\); install the fsspec backend for it"):
        open_repository("abfs://b/x")


def test_publish_uploads_every_file_and_the_manifest_last(url):
    repo = ObjectStoreRepository(url)
    with staged_version(repo, "m", b"graph") as staging:
        assert repo.publish(staging, "m") == 1
    local_parent = staging.path.parent
    assert not local_parent.exists()  # the local staging copy is gone
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(f"{url}/m/1/saved_model.pb") == b"graph"
    assert repo.versions("m") == [1]
    assert repo.checksum_problems("m", 1, repo.read_manifest("m", 1)) == []
    assert repo.version_location("m", 1) == f"{url}/m/1"


def test_a_checksum_mismatch_after_upload_publishes_nothing(url):
    repo = ObjectStoreRepository(url)
    with staged_version(repo, "m", b"graph") as staging:
        # The bytes change after the manifest recorded them, as a corrupted transfer would.
        (staging.path / "saved_model.pb").write_bytes(b"grapH")
        with pytest.raises(ShipyardError, match=r"the upload of memory://.*/m/1 does not match "
                                                r"its shipyard.json; it was removed and nothing "
                                                r"was published:\n  - saved_model.pb: content "
                                                r"differs from shipyard.json"):
            repo.publish(staging, "m")
    assert repo.versions("m") == [] and not repo.version_exists("m", 1)


def test_an_unfinished_upload_is_not_a_version_and_keeps_its_number(url):
    repo = ObjectStoreRepository(url)
    fsspec.filesystem("memory").pipe_file(f"{url}/m/1/saved_model.pb", b"half")
    assert repo.versions("m") == []
    with staged_version(repo, "m", b"graph") as staging:
        assert repo.publish(staging, "m") == 2


def test_publishing_a_number_over_an_unfinished_upload_replaces_it(url):
    repo = ObjectStoreRepository(url)
    fsspec.filesystem("memory").pipe_file(f"{url}/m/3/saved_model.pb", b"killed mid-upload")
    with staged_version(repo, "m", b"graph") as staging:
        assert repo.publish(staging, "m", 3) == 3  # e.g. `register` completing version 3
    assert fsspec.filesystem("memory").cat_file(f"{url}/m/3/saved_model.pb") == b"graph"
    assert repo.versions("m") == [3]


def test_url_spellings_are_normalized_and_a_bare_scheme_is_refused(url):
    assert ObjectStoreRepository(url + "//").location == url
    with pytest.raises(ShipyardError, match=r"^repo memory://: name a bucket or folder after "
                                            r"memory://"):
        ObjectStoreRepository("memory://")
