"""The local model repository: versions, staging, atomic publish (no TensorFlow)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from shipyard.core.errors import UsageError, VersionExistsError
from shipyard.core.names import validate_model_name
from shipyard.repository import LocalModelRepository, open_repository


def write_version(staging, marker: str) -> None:
    (staging.path / "saved_model.pb").write_text(marker)


def test_publish_assigns_the_next_version_and_never_overwrites(tmp_path):
    repo = LocalModelRepository(tmp_path)
    (tmp_path / "m" / "7").mkdir(parents=True)
    (tmp_path / "m" / "not-a-version").mkdir()
    with repo.create_staging("m") as staging:
        write_version(staging, "eight")
        assert staging.path.name.startswith(".staging-")  # TF Serving ignores it
        assert repo.publish(staging, "m") == 8
    assert repo.versions("m") == [7, 8]
    assert (tmp_path / "m" / "8" / "saved_model.pb").read_text() == "eight"
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".staging")] == []

    with repo.create_staging("m") as staging:
        write_version(staging, "other")
        with pytest.raises(VersionExistsError, match=r"m/8 already exists and published versions "
                                                     r"are never overwritten; omit --version to "
                                                     r"use 9"):
            repo.publish(staging, "m", 8)
    assert (tmp_path / "m" / "8" / "saved_model.pb").read_text() == "eight"


def test_an_empty_existing_version_directory_is_not_replaced(tmp_path):
    # os.rename would silently replace an empty directory; publish must refuse instead.
    repo = LocalModelRepository(tmp_path)
    (tmp_path / "m" / "2").mkdir(parents=True)
    with repo.create_staging("m") as staging:
        write_version(staging, "x")
        with pytest.raises(VersionExistsError, match="m/2 already exists"):
            repo.publish(staging, "m", 2)


def test_a_failed_run_leaves_no_staging_behind(tmp_path):
    repo = LocalModelRepository(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with repo.create_staging("m") as staging:
            write_version(staging, "x")
            raise RuntimeError("boom")
    assert not (tmp_path / "m").exists()  # nor an empty model directory


def test_staging_of_a_killed_process_is_removed_by_the_next_run(tmp_path):
    # A child creates a staging directory and is SIGKILLed while holding it.
    code = ("import sys, time; from shipyard.repository import LocalModelRepository;"
            f"s = LocalModelRepository({str(tmp_path)!r}).create_staging('m');"
            "(s.path / 'saved_model.pb').write_text('half'); print(s.path, flush=True);"
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    abandoned = child.stdout.readline().strip()
    companion = Path(abandoned + ".pyfunc")  # e.g. the MLflow upload folder of that run
    companion.mkdir()
    repo = LocalModelRepository(tmp_path)
    # While its owner lives, a staging directory and its companions are left alone.
    assert repo.remove_abandoned_staging("m") == []
    assert companion.is_dir()
    child.kill()
    child.wait()
    with repo.create_staging("m") as staging:
        assert str(staging.path) != abandoned
        assert [str(p) for p in (tmp_path / "m").glob(".staging-*") if p.is_dir()] == [
            str(staging.path)]
    assert repo.versions("m") == []


def test_concurrent_publishes_get_distinct_versions(tmp_path):
    repo = LocalModelRepository(tmp_path)
    stagings = [repo.create_staging("m") for _ in range(6)]
    versions: list[int] = []
    threads = [threading.Thread(target=lambda s=s: versions.append(repo.publish(s, "m")))
               for s in stagings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    for staging in stagings:
        staging.discard()


@pytest.mark.parametrize("name", ["../x", "a/b", "Model", "-m", "m-", ".hidden", "", "x" * 64])
def test_names_that_are_not_dns_labels_are_refused(name):
    with pytest.raises(UsageError, match=r"^name: .* is not a valid model name\. Expected a "
                                         r"DNS-1123 label"):
        validate_model_name(name)


def test_repository_refuses_bad_names_before_touching_disk(tmp_path):
    with pytest.raises(UsageError, match=r"'\.\./x' is not a valid model name"):
        LocalModelRepository(tmp_path / "repo").create_staging("../x")
    assert not (tmp_path / "repo").exists()


def test_symlinked_versions_are_reported_and_never_followed_or_removed(tmp_path):
    from shipyard.steps.gc import collect_garbage
    from shipyard.steps.status import model_status

    root, outside = tmp_path / "repo", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "saved_model.pb").write_text("someone else's model")
    for version in (1, 2):
        (root / "m" / str(version)).mkdir(parents=True)
    (root / "m" / "3").symlink_to(outside)
    (root / "m" / "4").symlink_to(tmp_path / "gone")  # dangling
    repo = LocalModelRepository(root)
    assert repo.versions("m") == [1, 2]
    assert repo.symlinked_versions("m") == {3: str(outside), 4: str(tmp_path / "gone")}

    status = model_status(repo, "m", read_aliases=None, read_server=None)
    rows = {row["version"]: row for row in status.versions}
    assert rows[3]["symlink"] == str(outside) and rows[3]["bytes"] is None
    assert rows[3]["on_disk"] is False and rows[1]["symlink"] is None
    assert len(status.warnings) == 2
    assert f"is a symlink to {outside}: shipyard did not publish it and neither follows" in \
        status.warnings[0]

    doc = collect_garbage(repo, "m", 0, read_aliases=None)
    assert doc.removed == [1, 2]
    assert sorted(doc.skipped) == ["3", "4"]
    assert doc.skipped["3"].startswith(f"a symlink to {outside}: gc never follows or removes")
    assert (root / "m" / "3").is_symlink() and (root / "m" / "4").is_symlink()
    assert (outside / "saved_model.pb").read_text() == "someone else's model"

    with repo.create_staging("m") as staging:  # never published over a link's number
        write_version(staging, "x")
        assert repo.publish(staging, "m") == 5
    with repo.create_staging("m") as staging, pytest.raises(VersionExistsError, match="m/4 already"):
        repo.publish(staging, "m", 4)  # a dangling link still takes its number


def test_a_symlink_an_older_gc_renamed_away_is_put_back(tmp_path):
    # Before symlinks were skipped, gc renamed a symlinked version to .removing-N-* and died.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".removing-3-0123abcd").symlink_to(outside)
    repo = LocalModelRepository(tmp_path)
    with repo.create_staging("m"):
        pass
    assert os.readlink(tmp_path / "m" / "3") == str(outside) and outside.is_dir()
    assert not (tmp_path / "m" / ".removing-3-0123abcd").exists()


def test_orphan_staging_locks_are_removed_but_held_ones_kept(tmp_path):
    (tmp_path / "m").mkdir()
    orphan = tmp_path / "m" / ".staging-0123456789ab.lock"  # a killed run's, no directory
    orphan.touch()
    # A live run between taking its lock and creating its directory.
    code = ("import sys, time; from filelock import FileLock;"
            f"lock = FileLock({str(tmp_path / 'm' / '.staging-live00000000.lock')!r});"
            "lock.acquire();"
            "print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        repo = LocalModelRepository(tmp_path)
        with repo.create_staging("m") as staging:
            locks = sorted(p.name for p in (tmp_path / "m").glob("*.lock"))
            assert locks == sorted([".staging-live00000000.lock", staging.path.name + ".lock"])
    finally:
        child.kill()
        child.wait()
    repo.remove_abandoned_staging("m")  # its holder is gone now
    assert sorted((tmp_path / "m").glob(".staging-*")) == []


def everything(root: Path) -> list[str]:
    """Every entry under `root`, lock files included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


FIX = (r"; give the model repository's directory \(the first export creates it\), or an object "
       r"store's URL such as gs://bucket/models$")


@pytest.mark.parametrize("where, message", [
    ("{file}", r"^repo {file}: {file} is a file, not a directory" + FIX),
    ("{file}/models", r"^repo {file}/models: {file} is a file, not a directory, so no "
                      r"repository can be created at {file}/models" + FIX),
    ("file://{file}", r"^repo {file}: {file} is a file, not a directory" + FIX),
    ("{link}", r"^repo {link}: {link} is a symlink to {file}, which is not a directory" + FIX),
    ("", r"^repo '': no path given" + FIX),
    ("file://", r"^repo file://: name a directory after file://, e\.g\. file:///srv/models, or "
                r"give the path itself$"),
    ("foo://", r"^repo foo://: foo:// is not a storage URL scheme; give a local path, a file:// "
               r"URL, or an object store's URL such as gs://bucket/models"),
    ("://models", r"^repo ://models: no URL scheme before ://; give a local path"),
])
def test_a_repository_location_that_cannot_be_one_is_a_usage_error(tmp_path, where, message):
    (tmp_path / "models.config").write_text("model_config_list {}\n")
    (tmp_path / "link").symlink_to(tmp_path / "models.config")
    names = {"file": str(tmp_path / "models.config"), "link": str(tmp_path / "link")}
    before = everything(tmp_path)
    with pytest.raises(UsageError, match=message.format(
            **{k: re.escape(v) for k, v in names.items()})) as refused:
        open_repository(where.format(**names))
    assert refused.value.param == "repo"  # shown as --repo on the command line
    assert everything(tmp_path) == before
    assert (tmp_path / "models.config").read_text() == "model_config_list {}\n"


def test_an_object_store_path_that_is_a_file_is_a_usage_error():
    import fsspec

    bucket = f"memory://file-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("memory").pipe_file(f"{bucket}/models", b"not a folder")
    try:
        with pytest.raises(UsageError, match=rf"^repo {bucket}/models: {bucket}/models is a file, "
                                             r"not a folder; give the model repository's "
                                             r"folder \(the first export creates it\)"):
            open_repository(f"{bucket}/models")
        assert open_repository(bucket).location == bucket  # its folder is a repository
    finally:
        fsspec.filesystem("memory").rm(bucket, recursive=True)


def test_a_failed_first_export_to_a_new_repository_leaves_no_directory(tmp_path):
    # A mistyped --repo that does not exist yet: the run creates <repo>/<name> and the
    # directories above it, and a failure removes all of them again.
    repo = LocalModelRepository(tmp_path / "new" / "models")
    with pytest.raises(RuntimeError, match="boom"):
        with repo.create_staging("m") as staging:
            assert staging.path.parent == tmp_path / "new" / "models" / "m"
            write_version(staging, "x")
            raise RuntimeError("boom")
    assert everything(tmp_path) == []

    # Directories that were there before are kept, even empty; so is what others put there.
    (tmp_path / "new").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "other").mkdir()
    for root in (tmp_path / "new" / "models", tmp_path / "kept" / "models"):
        staging = LocalModelRepository(root).create_staging("m")
        (root / "other").mkdir()  # another model, added while this run stages
        staging.discard()
        (root / "other").rmdir()
    assert everything(tmp_path) == ["kept", "kept/models", "kept/other", "new", "new/models"]


def test_a_published_version_keeps_the_repository_it_created(tmp_path):
    repo = LocalModelRepository(tmp_path / "new" / "models")
    with repo.create_staging("m") as staging:
        write_version(staging, "x")
        assert repo.publish(staging, "m") == 1
    assert (tmp_path / "new" / "models" / "m" / "1" / "saved_model.pb").read_text() == "x"


@pytest.mark.parametrize("repository", ["missing", "no-model"])
def test_push_and_gc_of_a_model_the_repository_lacks_create_nothing(tmp_path, repository):
    from shipyard.steps.gc import collect_garbage
    from shipyard.steps.push import push_version

    (tmp_path / "repo" / "other").mkdir(parents=True)
    root = tmp_path / ("nowhere" if repository == "missing" else "repo")
    repo = LocalModelRepository(root)
    before = everything(tmp_path)
    refused = (rf"^name m: the repository {re.escape(str(root))} has no model 'm' \(no "
               rf"{re.escape(str(root / 'm'))}\); check --name and --repo$")
    with pytest.raises(UsageError, match=refused):
        push_version(repo, "m", 1, "stable")
    with pytest.raises(UsageError, match=refused):
        collect_garbage(repo, "m", 0, read_aliases=None)
    assert everything(tmp_path) == before  # no model directory, no .serving.lock
