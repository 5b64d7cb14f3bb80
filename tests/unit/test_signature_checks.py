"""The pure parts of signature checking (issue 28): reconcile's `signature_failed` drift
(steps.drift), what `shipyard verify` reports and prints (steps.verify, cli.verify), and the
rollout policy's `verify_key` resolved beside the policy file. (On real signed versions:
integration/test_signing.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shipyard.cli.verify import describe_verify
from shipyard.signing.keys import KEY, TrustKey
from shipyard.steps.drift import (
    ConfigView,
    PublishedVersion,
    RegistryView,
    Repair,
    RepositoryView,
    find_drift,
)
from shipyard.steps.verify import NO_TRUST_KEY, VerifyResult

TAGS = {"shipyard.endpoints": "serve"}
TRUST = TrustKey(Path("/keys/pub.pem"), KEY, "sha256:" + "ab" * 32)


def views(signature: dict[int, str]):
    repo = RepositoryView({v: PublishedVersion(f"sha256:f{v}",
                                               {**TAGS, "shipyard.fingerprint": f"sha256:f{v}"},
                                               (), signature.get(v)) for v in (1, 2)})
    registry = RegistryView({"champion": 2}, {v: {**TAGS, "shipyard.fingerprint": f"sha256:f{v}",
                                                  "shipyard.serving_version": str(v),
                                                  "shipyard.published": "true"}
                                              for v in (1, 2)})
    return registry, repo, ConfigView((1,), {"stable": 1})


def drift(signature: dict[int, str]):
    return {(i.kind, i.subject): i for i in find_drift("m", *views(signature), [])}


def test_a_version_whose_signature_fails_is_drift_never_fixed_nor_labelled():
    assert drift({})[("champion_stable", "label stable")].repair == Repair("push", "stable", 2)
    items = drift({2: "saved_model.pb: its content differs from what was signed"})
    failed = items[("signature_failed", "version 2")]
    assert failed.repair is None and not failed.fixable
    assert failed.says == {
        "repository": {"version": 2,
                       "signature": "saved_model.pb: its content differs from what was signed"},
        "config": {"labels": []}, "registry": {"aliases": ["champion"]}}
    assert "re-publish it signed" in failed.fix and "move champion to a version that " \
        "verifies first" in failed.fix
    stable = items[("champion_stable", "label stable")]
    assert stable.repair is None
    assert "version 2, which is published, fails its signature" in stable.fix
    assert ("checksum_failed", "version 2") not in items


def test_an_unsigned_version_is_said_to_need_publishing_signed():
    items = drift({1: "no signature: assets.extra/model.sig is missing"})
    failed = items[("signature_failed", "version 1")]
    assert failed.says["config"] == {"labels": ["stable"]}
    assert "published unsigned: publish the model again with --sign-key" in failed.fix


def result(problems=(), signature_problem=None, trust=TRUST, recorded=None) -> VerifyResult:
    return VerifyResult("m", 3, "/repo/m/3", list(problems), 7, trust is not None,
                        signature_problem, trust, recorded)


def test_verify_fails_without_a_trust_key_and_says_the_signature_was_not_checked():
    unchecked = result(trust=None)
    assert not unchecked.ok and unchecked.signature_ok is None and unchecked.checksums_ok
    doc = unchecked.to_json()
    assert doc["signature"] == {"checked": False, "ok": None, "problem": NO_TRUST_KEY,
                                "trust_key": None, "recorded": None}
    assert describe_verify(doc).splitlines() == [
        "m version 3 at /repo/m/3: NOT VERIFIED",
        "  checksums: ok (7 files match shipyard.json)",
        f"  signature: {NO_TRUST_KEY}; its manifest records no signature"]


def test_verify_fails_on_either_part_and_lists_each_problem():
    record = {"method": "key", "key_fingerprint": "sha256:" + "cd" * 32}
    failed = result(["variables/v: content differs from shipyard.json"],
                    "variables/v: its content differs from what was signed; extra: added "
                    "after signing", recorded=record)
    assert not failed.ok and failed.signature_ok is False and not failed.checksums_ok
    assert describe_verify(failed.to_json()).splitlines() == [
        "m version 3 at /repo/m/3: FAILED",
        "  checksums: FAILED",
        "    - variables/v: content differs from shipyard.json",
        f"  signature: FAILED with the trust key {TRUST.fingerprint} (/keys/pub.pem)",
        "    - variables/v: its content differs from what was signed",
        "    - extra: added after signing"]
    assert not result(signature_problem="no signature: assets.extra/model.sig is missing").ok
    assert result(recorded=record).ok


def test_the_policys_verify_key_is_read_beside_the_policy_file(tmp_path):
    from shipyard.rollout.policy import load_policy, parse_policy

    assert parse_policy({"steps": [{"weight": 100}]}).verify_key is None
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"weight": 100}], "verify_key": "keys/pub.pem"}))
    assert load_policy(path).verify_key == str((tmp_path / "keys" / "pub.pem").resolve())
    from shipyard.core.errors import SpecError

    path.write_text(yaml.safe_dump({"steps": [{"weight": 100}], "verify_key": ""}))
    with pytest.raises(SpecError, match=r"verify_key: String should have at least 1 char"):
        load_policy(path)
