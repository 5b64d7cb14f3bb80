"""Signed versions across environments (issue 28): staging's version is registered with
`shipyard register --sign-key` (a real export, signed before it is published); `shipyard copy
--verify-key` checks the source's signature before anything is copied, and `--sign-key` signs
the copy with the destination's key after its proof, before it is published. A re-run of a
re-signed copy completes (reused), and the source is never changed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.copy_environments import sqlite_uri
from support.signing import make_key, tamper
from support.specs import SEQUENTIAL_SPEC, write_spec

from shipyard.core.manifest import MANIFEST_PATH, SIGNATURE_PATH


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {which: make_key(root / f"{which}.pem") for which in ("staging", "prod", "other")}


@pytest.fixture(scope="module")
def staging(models, launcher, keys, tmp_path_factory):
    """`churn` version 1 registered in staging through the CLI with --sign-key, and
    `champion` moved to it (with force, as by hand)."""
    from click.testing import CliRunner

    from shipyard.cli import main

    root = tmp_path_factory.mktemp("signed-staging")
    uri, repo = sqlite_uri(root / "mlflow"), root / "repo"
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), obj={"launch_verifier": launcher})

    registered = run("register", str(models.path("sequential")), "--spec",
                     str(write_spec(root, SEQUENTIAL_SPEC)), "--repo", str(repo), "--name",
                     "churn", "--tracking-uri", uri, "--sign-key", str(keys["staging"].private),
                     "--json")
    assert registered.exit_code == 0, registered.stderr
    doc = json.loads(registered.stdout)
    moved = run("alias", "set", "churn", "champion", str(doc["version"]), "--force",
                "--reason", "won in staging", "--tracking-uri", uri)
    assert moved.exit_code == 0, moved.stderr
    return {"uri": uri, "repo": repo, "version_dir": Path(doc["path"])}


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copy(cli, staging, tmp_path, *extra: str, from_repo: Path | None = None,
         to_repo: str | None = None):
    production = sqlite_uri(tmp_path / "prod-mlflow")
    result = cli("copy", "churn", "--alias", "champion", "--from-repo",
                 str(from_repo or staging["repo"]), "--from-tracking-uri", staging["uri"],
                 "--to-repo", to_repo or str(tmp_path / "prod-repo"),
                 "--to-tracking-uri", production, "--json", *extra)
    return result, production


def verify(cli, repo: str, key, version: int = 1):
    return cli("verify", "--repo", repo, "--name", "churn", "--version", str(version),
               "--verify-key", str(key.public), "--json")


def test_register_signs_and_copy_verifies_the_source_and_signs_the_copy_for_production(
        cli, staging, keys, tmp_path):
    source = staging["version_dir"]
    signed = json.loads((source / MANIFEST_PATH).read_text())["signing"]
    assert signed["key_fingerprint"] == keys["staging"].fingerprint
    assert verify(cli, str(staging["repo"]), keys["staging"]).exit_code == 0
    source_before = digests(source)

    arguments = ("--verify-key", str(keys["staging"].public),
                 "--sign-key", str(keys["prod"].private))
    result, production = copy(cli, staging, tmp_path, *arguments)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["version"], doc["reused"], doc["transfer"]) == (1, False, "hard links")
    assert doc["signing"]["key_fingerprint"] == keys["prod"].fingerprint
    assert doc["signing"]["method"] == "key"

    copied = tmp_path / "prod-repo" / "churn" / "1"
    ours = digests(copied)
    # Byte for byte but the manifest (its signing record) and the signature.
    assert set(ours) == set(source_before)
    assert {k for k in ours if ours[k] != source_before[k]} == {MANIFEST_PATH, SIGNATURE_PATH}
    manifest = json.loads((copied / MANIFEST_PATH).read_text())
    source_manifest = json.loads((source / MANIFEST_PATH).read_text())
    assert manifest["signing"]["key_fingerprint"] == keys["prod"].fingerprint
    assert {k: v for k, v in manifest.items() if k != "signing"} == \
        {k: v for k, v in source_manifest.items() if k != "signing"}
    # The source is unchanged (its files were hard-linked into the copy, and are not now).
    assert digests(source) == source_before
    assert verify(cli, str(staging["repo"]), keys["staging"]).exit_code == 0

    good = verify(cli, str(tmp_path / "prod-repo"), keys["prod"])
    assert good.exit_code == 0, good.stdout + good.stderr
    wrong = verify(cli, str(tmp_path / "prod-repo"), keys["staging"])
    assert wrong.exit_code == 4
    assert f"not made by the trust key {keys['staging'].fingerprint}" in wrong.stdout
    own = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(copied), "--signature",
         str(copied / SIGNATURE_PATH), "--public_key", str(keys["prod"].public)],
        capture_output=True, text=True, timeout=120)
    assert own.returncode == 0, own.stdout + own.stderr

    # The same command again: the destination's directory holds the source's files but the
    # re-signed manifest and signature, and is reused as it is (nothing new, nothing changed).
    copied_before = digests(copied)
    again, _ = copy(cli, staging, tmp_path, *arguments)
    assert again.exit_code == 0, again.stderr
    redoc = json.loads(again.stdout)
    assert (redoc["version"], redoc["reused"]) == (1, True)
    assert redoc["signing"]["key_fingerprint"] == keys["prod"].fingerprint
    assert digests(copied) == copied_before
    # A new destination key (a rotation) does not rewrite a published version either.
    rotated, _ = copy(cli, staging, tmp_path, "--sign-key", str(keys["other"].private))
    assert rotated.exit_code == 0, rotated.stderr
    assert json.loads(rotated.stdout)["signing"]["key_fingerprint"] == keys["prod"].fingerprint
    assert digests(copied) == copied_before
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=production, registry_uri=production)
    assert [str(v.version) for v in client.search_model_versions("name='churn'")] == ["1"]


@pytest.mark.parametrize("change, message", [
    ("added", "assets.extra/added.txt: added after signing"),
    ("manifest", "assets.extra/shipyard.json: its content differs from what was signed"),
])
def test_a_source_whose_signature_fails_is_not_copied(cli, staging, keys, tmp_path, change,
                                                      message):
    broken = tmp_path / "broken-staging"
    shutil.copytree(staging["repo"], broken)
    tamper(broken / "churn" / "1", change)
    result, production = copy(cli, staging, tmp_path, "--verify-key",
                              str(keys["staging"].public), from_repo=broken)
    assert result.exit_code == 4, result.stderr
    assert f"churn version 1 ({broken.resolve() / 'churn' / '1'}): its signature does not " \
           f"verify with the trust key {keys['staging'].fingerprint}" in result.stderr
    assert message in result.stderr and "nothing was changed" in result.stderr
    assert not (tmp_path / "prod-repo").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=production, registry_uri=production)
    assert client.search_registered_models() == []


def test_a_source_signed_with_another_key_is_not_copied(cli, staging, keys, tmp_path):
    result, _ = copy(cli, staging, tmp_path, "--verify-key", str(keys["other"].public))
    assert result.exit_code == 4
    assert f"the signature was not made by the trust key {keys['other'].fingerprint}" in \
        result.stderr
    assert f"its manifest says it was signed with key {keys['staging'].fingerprint}" in \
        result.stderr
    assert not (tmp_path / "prod-repo").exists()


def test_without_a_signing_key_the_copy_keeps_the_sources_signature(
        cli, staging, keys, tmp_path, monkeypatch):
    monkeypatch.delenv("SHIPYARD_SIGNING_KEY", raising=False)
    result, _ = copy(cli, staging, tmp_path)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["signing"]["key_fingerprint"] == keys["staging"].fingerprint
    assert digests(tmp_path / "prod-repo" / "churn" / "1") == digests(staging["version_dir"])
    assert verify(cli, str(tmp_path / "prod-repo"), keys["staging"]).exit_code == 0


def test_a_copy_into_an_object_store_is_signed_there(cli, staging, keys, tmp_path, url):
    import fsspec

    result, _ = copy(cli, staging, tmp_path, "--sign-key", str(keys["prod"].private),
                     to_repo=url)
    assert result.exit_code == 0, result.stderr
    fs, root = fsspec.core.url_to_fs(url)
    assert fs.exists(f"{root}/churn/1/{SIGNATURE_PATH}")
    good = verify(cli, url, keys["prod"])
    assert good.exit_code == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["signature"]["recorded"]["key_fingerprint"] == \
        keys["prod"].fingerprint
