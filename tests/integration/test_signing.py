"""Signed versions (issue 28): `shipyard verify`, and the signature check of `push`,
`reconcile` and `rollout start` with a trust key, on copies of the session's published
versions signed here with keys made here (ECDSA P-256), through model-signing's own signer and
verifier. Each way of changing a signed version (a variable file, the manifest, saved_model.pb,
a warmup record, an added file, a forged manifest) is refused with the file named, and nothing
changes. (`copy` and `register --sign-key`: test_signing_copy.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.signing import make_key, sign, signed_version, tamper
from support.versions import add_version, config_of

from shipyard.core.manifest import MANIFEST_PATH, SIGNATURE_PATH
from shipyard.serving.config import model_serving

VARIABLES = "variables/variables.data-00000-of-00001"
WARMUP = "assets.extra/tf_serving_warmup_requests"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two signing keys made here: `key` (the publisher's) and `other` (someone else's)."""
    root = tmp_path_factory.mktemp("keys")
    return {"key": make_key(root / "key.pem"), "other": make_key(root / "other.pem")}


@pytest.fixture
def templates(published):
    return {1: published / "m" / "1", 2: published / "m" / "2"}


def verify(cli, repo, version: int, *extra: str):
    return cli("verify", "--repo", str(repo), "--name", "m", "--version", str(version), *extra)


def push(cli, repo, version: int, *extra: str):
    return cli("push", "--repo", str(repo), "--name", "m", "--version", str(version),
               "--label", "stable", *extra)


def test_a_signed_version_verifies_pushes_and_model_signings_own_cli_accepts_it(
        cli, templates, repo, keys):
    key = keys["key"]
    directory = signed_version(repo, "m", 1, templates[1], key)
    add_version(repo, "m", 2, templates[2])  # unsigned

    result = verify(cli, repo, 1, "--verify-key", str(key.public), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["checksums"]["ok"] is True
    assert doc["checksums"]["files"] > 3 and doc["checksums"]["problems"] == []
    assert doc["signature"]["checked"] is True and doc["signature"]["ok"] is True
    assert doc["signature"]["trust_key"]["fingerprint"] == key.fingerprint
    assert doc["signature"]["recorded"]["method"] == "key"
    assert doc["signature"]["recorded"]["key_fingerprint"] == key.fingerprint
    assert doc["signature"]["recorded"]["signature"] == SIGNATURE_PATH
    human = verify(cli, repo, 1, "--verify-key", str(key.public))
    assert human.exit_code == 0, human.stderr
    assert f"m version 1 at {directory.resolve()}: verified" in human.stdout
    assert f"signature: ok, verifies with the trust key {key.fingerprint}" in human.stdout

    # The library's own CLI accepts what shipyard signs.
    own = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(directory),
         "--signature", str(directory / SIGNATURE_PATH), "--public_key", str(key.public)],
        capture_output=True, text=True, timeout=120)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "Verification succeeded" in own.stdout + own.stderr

    pushed = push(cli, repo, 1, "--verify-key", str(key.public), "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert model_serving(config_of(repo), "m").versions == (1,)

    status = cli("status", "--repo", str(repo), "--name", "m", "--json")
    assert status.exit_code == 0, status.stderr
    rows = {row["version"]: row for row in json.loads(status.stdout)["versions"]}
    assert rows[1]["signing"] == {"method": "key", "key_fingerprint": key.fingerprint}
    assert rows[2]["signing"] is None
    table = cli("status", "--repo", str(repo), "--name", "m").stdout
    line = {int(row.split()[0]): row for row in table.splitlines()[2:]}
    assert line[1].endswith(f"key {key.fingerprint[:19]}") and line[2].endswith("unsigned")


def test_verify_without_a_trust_key_checks_the_checksums_and_says_the_signature_was_not(
        cli, templates, repo, keys, monkeypatch):
    """Exit 0 only when both hold (issue 28): an unchecked signature is exit 4."""
    monkeypatch.delenv("SHIPYARD_VERIFY_KEY", raising=False)
    signed_version(repo, "m", 1, templates[1], keys["key"])
    result = verify(cli, repo, 1, "--json")
    assert result.exit_code == 4, result.stderr
    assert "the signature was not checked (no trust key: pass --verify-key PEM" in result.stderr
    signature = json.loads(result.stdout)["signature"]
    assert (signature["checked"], signature["ok"]) == (False, None)
    assert signature["problem"].startswith("not checked: no trust key")
    human = verify(cli, repo, 1)
    assert human.exit_code == 4
    assert "m version 1 at" in human.stdout and ": NOT VERIFIED" in human.stdout
    assert "checksums: ok" in human.stdout
    assert ("signature: not checked: no trust key (pass --verify-key PEM or set "
            f"SHIPYARD_VERIFY_KEY); signed with key {keys['key'].fingerprint}") in human.stdout

    tamper(repo / "m" / "1", "variable")  # the checksums alone still catch a changed file
    broken = verify(cli, repo, 1)
    assert broken.exit_code == 4
    assert f"- {VARIABLES}: content differs from shipyard.json" in broken.stdout
    assert "checksums failed; see above" in broken.stderr

    missing = verify(cli, repo, 9)
    assert missing.exit_code == 2
    assert "--version 9: " in missing.stderr and "does not exist; versions of m" in \
        missing.stderr


# What each change is refused with: the file model-signing names.
CHANGES = {
    "variable": f"{VARIABLES}: its content differs from what was signed",
    "manifest": "assets.extra/shipyard.json: its content differs from what was signed",
    "saved_model": "saved_model.pb: its content differs from what was signed",
    "warmup": f"{WARMUP}: its content differs from what was signed",
    "added": "assets.extra/added.txt: added after signing",
    # A forgery: a variable changed, and the manifest's checksum of it rewritten to match.
    "forged": f"{VARIABLES}: its content differs from what was signed",
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_signed_version_is_refused_by_verify_and_push_naming_the_file(
        cli, templates, repo, keys, change):
    key = keys["key"]
    signed_version(repo, "m", 1, templates[1], key)
    signed_version(repo, "m", 2, templates[2], key)
    for _ in range(2):  # the second push completes the label (no server to wait for)
        assert push(cli, repo, 1, "--verify-key", str(key.public)).exit_code == 0
    config_before = (repo / "models.config").read_bytes()
    tamper(repo / "m" / "2", change)

    checked = verify(cli, repo, 2, "--verify-key", str(key.public), "--json")
    assert checked.exit_code == 4
    doc = json.loads(checked.stdout)
    assert doc["ok"] is False and doc["signature"]["ok"] is False
    assert CHANGES[change] in doc["signature"]["problem"]
    assert "signature failed; see above" in checked.stderr
    if change == "forged":  # the checksums match the forged manifest: only the signature
        assert doc["checksums"]["ok"] is True  # tells
        assert "assets.extra/shipyard.json: its content differs" in doc["signature"]["problem"]

    refused = push(cli, repo, 2, "--verify-key", str(key.public))
    assert refused.exit_code == 4, refused.stderr
    assert "m version 2 (" in refused.stderr
    assert f"its signature does not verify with the trust key {key.fingerprint}" in \
        refused.stderr
    assert CHANGES[change] in refused.stderr
    assert "It is refused; nothing was changed" in refused.stderr
    assert (repo / "models.config").read_bytes() == config_before


def test_an_unsigned_version_is_refused_when_a_trust_key_is_set(
        cli, templates, repo, keys, monkeypatch):
    add_version(repo, "m", 1, templates[1])
    monkeypatch.setenv("SHIPYARD_VERIFY_KEY", str(keys["key"].public))
    refused = push(cli, repo, 1)
    assert refused.exit_code == 4
    assert (f"m version 1 ({(repo / 'm').resolve() / '1'}): its signature does not verify "
            f"with the trust key {keys['key'].fingerprint}") in refused.stderr
    assert "no signature: assets.extra/model.sig is missing" in refused.stderr
    assert not (repo / "models.config").exists()
    checked = verify(cli, repo, 1)
    assert checked.exit_code == 4
    assert "signature: FAILED" in checked.stdout
    assert "- no signature: assets.extra/model.sig is missing" in checked.stdout
    assert "its manifest records no signature" not in checked.stdout


def test_a_version_signed_with_another_key_is_refused_naming_both_keys(
        cli, templates, repo, keys):
    signed_version(repo, "m", 1, templates[1], keys["other"])
    trust = keys["key"]
    checked = verify(cli, repo, 1, "--verify-key", str(trust.public))
    assert checked.exit_code == 4
    assert f"the signature was not made by the trust key {trust.fingerprint}" in checked.stdout
    assert f"its manifest says it was signed with key {keys['other'].fingerprint}" in \
        checked.stdout
    refused = push(cli, repo, 1, "--verify-key", str(trust.public))
    assert refused.exit_code == 4
    assert f"the signature was not made by the trust key {trust.fingerprint}" in refused.stderr
    assert not (repo / "models.config").exists()
    # A trust key that is no key is a usage error, before anything is read.
    (repo / "not-a-key.pem").write_text("hello")
    bad = push(cli, repo, 1, "--verify-key", str(repo / "not-a-key.pem"))
    assert bad.exit_code == 2
    assert "--verify-key: " in bad.stderr and "holds no PEM public key" in bad.stderr


def test_an_object_store_version_is_downloaded_for_the_check(
        cli, templates, keys, url, tmp_path):
    import fsspec

    key = keys["key"]
    fs, root = fsspec.core.url_to_fs(url)
    directory = signed_version(tmp_path / "local", "m", 1, templates[1], key)
    fs.put(str(directory) + "/", f"{root}/m/1", recursive=True)
    assert fs.exists(f"{root}/m/1/{SIGNATURE_PATH}")
    good = verify(cli, url, 1, "--verify-key", str(key.public), "--json")
    assert good.exit_code == 0, good.stderr
    assert json.loads(good.stdout)["signature"]["ok"] is True

    fs.pipe_file(f"{root}/m/1/assets.extra/added.txt", b"dropped in the bucket")
    bad = verify(cli, url, 1, "--verify-key", str(key.public))
    assert bad.exit_code == 4
    assert "- assets.extra/added.txt: added after signing" in bad.stdout
    refused = push(cli, url, 1, "--verify-key", str(key.public))
    assert refused.exit_code == 4
    assert "assets.extra/added.txt: added after signing" in refused.stderr
    assert not fs.exists(f"{root}/models.config")


# ---- reconcile -----------------------------------------------------------------------------


def test_reconcile_reports_a_version_whose_signature_fails_and_never_labels_it(
        cli, templates, repo, keys, tmp_path):
    from mlflow import MlflowClient

    from shipyard.core.manifest import read_manifest

    key = keys["key"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    signed_version(repo, "m", 1, templates[1], key)
    add_version(repo, "m", 2, templates[2])  # published unsigned
    for version in (1, 2):
        manifest = read_manifest(repo / "m" / str(version))
        client.create_model_version("m", source=f"s3://nowhere/m/{version}", tags={
            "shipyard.fingerprint": manifest.fingerprint,
            "shipyard.endpoints": ",".join(manifest.endpoint_names()),
            "shipyard.variable_collections": json.dumps(
                manifest.variable_collections, sort_keys=True, separators=(",", ":")),
            "shipyard.serving_version": str(version), "shipyard.published": "true",
            "shipyard.pipeline_run_id": ""})
    client.set_registered_model_alias("m", "champion", "2")
    for _ in range(2):
        assert push(cli, repo, 1).exit_code == 0
    config_before = (repo / "models.config").read_bytes()
    reconcile = ["reconcile", "--repo", str(repo), "--name", "m", "--tracking-uri", uri,
                 "--json"]

    unchecked = cli(*reconcile)  # without a trust key, stable may follow champion
    assert unchecked.exit_code == 10
    assert [(i["kind"], i["fixable"]) for i in json.loads(unchecked.stdout)["drift"]] == [
        ("champion_stable", True)]

    checked = cli(*reconcile, "--verify-key", str(key.public), "--fix")
    assert checked.exit_code == 10, checked.stderr
    doc = json.loads(checked.stdout)
    items = {item["kind"]: item for item in doc["drift"]}
    assert sorted(items) == ["champion_stable", "signature_failed"]
    assert items["champion_stable"]["fixable"] is False
    assert "version 2, which is published, fails its signature" in \
        items["champion_stable"]["fix"]
    failed = items["signature_failed"]
    assert (failed["subject"], failed["fixable"]) == ("version 2", False)
    assert failed["says"]["repository"]["signature"].startswith(
        "no signature: assets.extra/model.sig is missing")
    assert failed["says"]["registry"] == {"aliases": ["champion"]}
    assert "published unsigned: publish the model again with --sign-key" in failed["fix"]
    assert doc["fixed"] == []
    assert (repo / "models.config").read_bytes() == config_before


# ---- rollout start ---------------------------------------------------------------------------


class _World:
    """The rollout's cluster and registry as fakes (unit/test_rollout_cli.py's), and whether
    the command got as far as making them."""

    def __init__(self):
        from support.rollout_fakes import FakeClock, FakeCluster, RecordingAliases, ScriptedObserver

        from shipyard.rollout.gates import Observation

        self.cluster = FakeCluster(stable=1)
        self.aliases = RecordingAliases(champion=1)
        self.observer = ScriptedObserver([Observation(error_rate=0.0, p99_latency_ms=20)])
        self.clock = FakeClock()
        self.connected = False

    def ports(self, name, namespace, policy):
        from shipyard.rollout.controller import Ports

        self.connected = True
        return Ports(self.cluster, self.observer, self.aliases, clock=self.clock,
                     sleep=self.clock.sleep)

    def run(self, *args: str):
        from click.testing import CliRunner

        from shipyard.cli import main

        return CliRunner().invoke(main, list(args), obj={"rollout_ports": self.ports})


def test_rollout_start_verifies_the_version_before_anything_is_deployed(
        templates, repo, keys, tmp_path, monkeypatch):
    monkeypatch.delenv("SHIPYARD_VERIFY_KEY", raising=False)
    key = keys["key"]
    signed_version(repo, "m", 1, templates[1], key)
    signed_version(repo, "m", 2, templates[2], key)
    (tmp_path / "policy" / "keys").mkdir(parents=True)
    (tmp_path / "policy" / "keys" / "pub.pem").write_bytes(key.public.read_bytes())
    policy = tmp_path / "policy" / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "steps": [{"weight": 50, "pause_seconds": 30}], "check_interval_seconds": 30,
        "gates": {"max_error_rate": 0.01}, "verify_key": "keys/pub.pem"}))
    start = ["rollout", "start", "--name", "m", "--version", "2", "--policy", str(policy)]

    world = _World()  # the policy's trust key, and the repository on the PVC: --repo needed
    result = world.run(*start)
    assert result.exit_code == 2
    assert "--repo: a trust key is set (" + key.fingerprint in result.stderr
    assert "on the PVC 'shipyard-models', which this command cannot read: pass --repo" in \
        result.stderr
    assert not world.connected and world.cluster.calls == []

    tamper(repo / "m" / "2", "warmup")
    world = _World()
    result = world.run(*start, "--repo", str(repo))
    assert result.exit_code == 4
    assert "m version 2 (" in result.stderr
    assert f"{WARMUP}: its content differs from what was signed" in result.stderr
    assert f"trust key {key.fingerprint} ({tmp_path / 'policy' / 'keys' / 'pub.pem'})" in \
        result.stderr
    assert not world.connected and world.cluster.calls == []
    assert world.aliases.champion_version == 1

    world = _World()  # another key given on the command line wins over the policy's
    result = world.run("rollout", "start", "--name", "m", "--version", "1", "--policy",
                       str(policy), "--repo", str(repo), "--verify-key",
                       str(keys["other"].public))
    assert result.exit_code == 4
    assert f"the signature was not made by the trust key {keys['other'].fingerprint}" in \
        result.stderr
    assert not world.connected

    directory = repo / "m" / "2"  # restored: signed again, the rollout goes ahead
    import shutil

    shutil.rmtree(directory)
    signed_version(repo, "m", 2, templates[2], key)
    world = _World()
    result = world.run(*start, "--repo", str(repo), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["phase"] == "promoted"
    assert world.cluster.stable == 2


def test_a_policy_whose_verify_key_is_missing_is_refused_naming_it(tmp_path):
    from shipyard.core.errors import SpecError
    from shipyard.rollout.policy import load_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"steps": [{"weight": 100}], "verify_key": "nope.pem"}))
    with pytest.raises(SpecError, match=r"verify_key: .*/nope\.pem is not a file \(a PEM "
                                        r"public key or CA certificate, relative to the "
                                        r"policy file\)"):
        load_policy(policy)


def test_sign_leaves_what_model_signing_hashes_alone(templates, tmp_path, keys):
    """The helpers' own check: a signed copy of a published version differs from it in the
    manifest's signing record and the signature only."""
    directory = signed_version(tmp_path, "m", 1, templates[1], keys["key"])
    original = templates[1]

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file()}

    ours, theirs = digests(directory), digests(original)
    assert set(ours) - set(theirs) == {SIGNATURE_PATH}
    assert {k for k in theirs if ours[k] != theirs[k]} == {MANIFEST_PATH}
    assert json.loads((directory / MANIFEST_PATH).read_text())["signing"]["key_fingerprint"] \
        == keys["key"].fingerprint
    sign(directory, keys["key"])  # signing again replaces the signature, and still verifies
    from shipyard.signing.bundle import check_version
    from shipyard.signing.keys import trust_key

    assert check_version(directory, trust_key(keys["key"].public)).ok
