"""Full disks, read-only repositories and permission errors during export, push and gc.

Real faults, not fakes: the repository lives on a small tmpfs mounted for the test (full: a
filler file takes the rest; read-only: remounted ro; permission: owned by root, mode 0755, and
the test drops to user nobody with seteuid). Where the machine cannot mount (not root, no
CAP_SYS_ADMIN), the tests skip and say why.

Each case checks the one-paragraph error (what failed, the path, bytes needed against bytes
free, the fix), exit 1, and that nothing partial is left: no staging directory, no version,
models.config byte for byte as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support.specs import SEQUENTIAL_SPEC as SPEC

from shipyard.core.errors import StorageError
from shipyard.core.spec import parse_spec
from shipyard.repository import LocalModelRepository
from shipyard.steps.export import ExportRequest, export_model

NOBODY = 65534


@pytest.fixture
def tmpfs():
    """mount(size, **options) -> a fresh tmpfs; unmounted after the test.

    Mounted under a world-traversable directory (pytest's tmp_path is 0700), so that the
    permission cases can reach it as user nobody."""
    holder = Path(tempfile.mkdtemp(prefix="shipyard-test-tmpfs-"))
    holder.chmod(0o755)
    mounted: list[Path] = []

    def mount(size: str = "256k", **options: str) -> Path:
        target = holder / f"fs{len(mounted)}"
        target.mkdir()
        opts = ",".join([f"size={size}", *(f"{k}={v}" for k, v in options.items())])
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                        "the disk-full and read-only cases need a small real file system")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)
    shutil.rmtree(holder, ignore_errors=True)


def remount_read_only(target: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)


def fill(target: Path) -> Path:
    """Fills the file system of `target` to the last byte; returns the filler file."""
    filler = target / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert shutil.disk_usage(target).free == 0
    return filler


@contextlib.contextmanager
def as_nobody():
    """Root ignores file modes; a permission error needs another user. seteuid is undone
    after the block (the saved uid stays 0)."""
    if os.geteuid() != 0:
        yield  # already an ordinary user: modes apply as they are
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def version_of(templates, repo: Path, name: str, version: int) -> Path:
    target = repo / name / str(version)
    shutil.copytree(templates, target)
    return target


@pytest.fixture
def template(published) -> Path:
    """A published version of the small test model (the session's, tests/conftest.py): tests
    copy it (version_of), never change it."""
    return published / "m" / "1"


def leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")
                  if p.name.startswith((".staging-", ".removing-", ".models.config."))
                  and not p.name.endswith(".lock"))


def assert_one_paragraph(stderr: str) -> str:
    """The error is one line (one paragraph), the last thing printed, with no traceback."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


# ---- export ----------------------------------------------------------------------------------

def test_export_on_a_full_disk_names_the_bytes_and_leaves_nothing(cli, models, tmpfs, tmp_path):
    repo = tmpfs("16k")  # the SavedModel of the small model is ~50 kB
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m")
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "cannot write the SavedModel" in line and "no space left on device" in line
    assert f"{repo}/m/.staging-" in line
    assert "bytes needed" in line and "bytes free" in line
    assert "free space" in line and "--repo" in line
    assert "Nothing was published: the staging directory is removed." in line
    assert leftovers(repo) == [] and not (repo / "m").exists()
    assert shutil.disk_usage(repo).used == 0  # every byte written came back


def test_export_to_a_read_only_repository(models, launcher, tmpfs):
    repo = tmpfs()
    (repo / "m").mkdir()  # an existing model: the first write is the staging lock
    remount_read_only(repo)
    with pytest.raises(StorageError, match=(
            rf"cannot create a staging directory in {repo}/m: read-only file system \(EROFS\)"
            r".*bytes needed.*bytes free.*remount .* read-write.*another --repo")):
        export_model(ExportRequest(model=models.path("sequential"), spec=parse_spec(SPEC),
                                   repo=repo, name="m"), launch_verifier=launcher)
    assert sorted(p.name for p in (repo / "m").iterdir()) == []


def test_export_without_write_permission(models, tmpfs):
    repo = tmpfs(mode="0755")  # root's, not writable by nobody
    source = repo / "model.keras"
    shutil.copy(models.path("sequential"), source)
    from shipyard.exporter.verifier import start_verifier

    # Started as root (the venv's Python lies under /root, which nobody may not run) and
    # stopped before the switch: nobody could not kill a root process. The failure comes
    # before verification, so the export never needs it.
    verifier = start_verifier()
    verifier._process.kill()
    verifier._process.wait()
    try:
        with as_nobody():
            with pytest.raises(StorageError, match=(
                    rf"cannot create a staging directory in {repo}/m: permission denied "
                    r"\(EACCES\).*bytes needed.*bytes free.*give user nobody write access to "
                    rf"{repo} \(owned by uid 0, mode 0755\), or choose another --repo")):
                export_model(ExportRequest(model=source, spec=parse_spec(SPEC), repo=repo,
                                           name="m"), launch_verifier=lambda: verifier)
    finally:
        verifier.close()  # as root: its work directory is root's
    assert sorted(p.name for p in repo.iterdir()) == ["model.keras"]


def test_register_on_a_full_disk_registers_nothing(cli, models, tmpfs, tmp_path):
    from mlflow import MlflowClient

    repo = tmpfs("16k")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli("register", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--tracking-uri", uri)
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "cannot write the SavedModel" in line and "no space left on device" in line
    assert "Nothing was published: the staging directory is removed." in line
    assert leftovers(repo) == [] and not (repo / "m").exists()
    # The export fails before MLflow is written to: no run, no version to clean up.
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='m'") \
        == []


# ---- push ------------------------------------------------------------------------------------

def push_args(repo: Path, version: int) -> list[str]:
    return ["push", "--repo", str(repo), "--name", "m", "--version", str(version), "--label",
            "stable"]


def test_push_on_a_full_disk_leaves_models_config_untouched(cli, template, tmpfs):
    repo = tmpfs("256k")
    for version in (1, 2):
        version_of(template, repo, "m", version)
    assert cli(*push_args(repo, 1)).exit_code == 0
    before = (repo / "models.config").read_bytes()
    fill(repo)
    result = cli(*push_args(repo, 2))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert f"cannot write models.config in {repo}: no space left on device (ENOSPC)" in line
    assert "bytes needed" in line and "0 bytes free" in line and "free space" in line
    assert "models.config is unchanged" in line
    assert (repo / "models.config").read_bytes() == before
    assert leftovers(repo) == []


def test_push_to_a_read_only_repository(cli, template, tmpfs):
    repo = tmpfs()
    version_of(template, repo, "m", 1)
    remount_read_only(repo)
    result = cli(*push_args(repo, 1))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "read-only file system (EROFS)" in line and str(repo) in line
    assert "remount" in line and "another --repo" in line
    assert not (repo / "models.config").exists()


def test_push_without_write_permission(cli, template, tmpfs):
    repo = tmpfs(mode="0755")
    version_of(template, repo, "m", 1)
    with as_nobody():
        result = cli(*push_args(repo, 1))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "permission denied (EACCES)" in line and f"{repo}/m" in line
    assert "write access" in line
    assert not (repo / "models.config").exists()


# ---- gc --------------------------------------------------------------------------------------

def gc_args(repo: Path) -> list[str]:
    return ["gc", "--repo", str(repo), "--name", "m", "--keep", "1", "--no-registry", "--json"]


def test_gc_on_a_full_disk_frees_space(cli, template, tmpfs):
    # gc is how a full disk gets space back: it must work with 0 bytes free.
    repo = tmpfs("256k")
    for version in (1, 2, 3):
        version_of(template, repo, "m", version)
    filler = fill(repo)
    result = cli(*gc_args(repo))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == [1, 2]
    assert shutil.disk_usage(repo).free > 0
    filler.unlink()


def test_gc_with_no_inode_left_names_the_inodes(cli, template, tmpfs):
    repo = tmpfs("1m", nr_inodes="64")
    for version in (1, 2):
        version_of(template, repo, "m", version)
    index = 0
    with contextlib.suppress(OSError):
        while True:
            (repo / f"empty-{index}").touch()
            index += 1
    result = cli(*gc_args(repo))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "cannot create the lock file" in line and "no space left on device" in line
    assert "0 inodes free" in line
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]


def test_gc_on_a_read_only_repository_removes_nothing(cli, template, tmpfs):
    repo = tmpfs()
    for version in (1, 2):
        version_of(template, repo, "m", version)
    remount_read_only(repo)
    result = cli(*gc_args(repo))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert "read-only file system (EROFS)" in line and "remount" in line
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]


def test_gc_without_write_permission_removes_nothing(cli, template, tmpfs):
    repo = tmpfs(mode="0755")
    for version in (1, 2):
        version_of(template, repo, "m", version)
    # The lock files exist (an earlier push made them): the first refused write is the removal.
    for lock in (".serving.lock", ".publish.lock"):
        (repo / "m" / lock).touch()
        (repo / "m" / lock).chmod(0o666)
    with as_nobody():
        result = cli(*gc_args(repo))
    assert result.exit_code == 1, (result.stderr, repr(result.exception))
    line = assert_one_paragraph(result.stderr)
    assert f"cannot remove version 1 ({repo}/m/1): permission denied (EACCES)" in line
    assert "write access" in line
    assert sorted(p.name for p in (repo / "m").iterdir() if not p.name.startswith(".")) == \
        ["1", "2"]


def test_repository_writes_name_operation_path_and_space(tmpfs):
    """The repository's own boundaries, without TensorFlow: staging, publish, config."""
    root = tmpfs("64k")
    repo = LocalModelRepository(root)
    with repo.create_staging("m") as staging:
        (staging.path / "saved_model.pb").write_bytes(b"x" * 1000)
        version = repo.publish(staging, "m")
    assert version == 1
    repo.write_config("model_config_list {}\n")
    fill(root)
    with pytest.raises(StorageError, match=(
            rf"cannot write models.config in {root}: no space left on device \(ENOSPC\)\. "
            rf"\d+ bytes needed, 0 bytes free and \d+ inodes free on {root}\. To fix: free "
            rf"space on {root}.*models.config is unchanged\.")):
        repo.write_config("model_config_list {}\n" * 10)
    assert (root / "models.config").read_text() == "model_config_list {}\n"
    assert leftovers(root) == []
