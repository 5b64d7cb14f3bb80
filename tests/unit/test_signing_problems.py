"""What a failed signature check says, from model-signing's own error (signing.bundle): every
file named, however Python's repr quoted it. Pure: the library's messages, as it raises them."""

from __future__ import annotations

from pathlib import Path

from shipyard.signing.bundle import _problem
from shipyard.signing.keys import KEY, TrustKey

TRUST = TrustKey(Path("/keys/pub.pem"), KEY, "sha256:" + "ab" * 32)


def mismatch(*paths_and_digests: tuple[str, bytes]) -> ValueError:
    """model-signing 1.1.1's error: `f"Signature mismatch: {diffs}"` over a list of strings."""
    diffs = [f"Hash mismatch for '{path}': Expected 'Digest(algorithm='sha256', "
             f"digest_value={b'0' * 32!r})', Actual 'Digest(algorithm='sha256', "
             f"digest_value={digest!r})'" for path, digest in paths_and_digests]
    return ValueError(f"Signature mismatch: {diffs}")


def test_every_changed_file_is_named_even_when_a_digest_holds_a_quote():
    err = mismatch(("assets.extra/shipyard.json", b"\xd0G'\xc1" + b"\x00" * 28),
                   ("variables/variables.data-00000-of-00001", b"\x01" * 32))
    assert "\\'assets.extra/shipyard.json\\'" in str(err)  # the repr escaped its quotes
    assert _problem(err, TRUST) == (
        "assets.extra/shipyard.json: its content differs from what was signed; "
        "variables/variables.data-00000-of-00001: its content differs from what was signed")


def test_another_key_is_said_with_the_trust_keys_fingerprint():
    problem = _problem(ValueError("Key mismatch: The public key hash in the signature's "
                                  "verification material does not match"), TRUST)
    assert problem.startswith(f"the signature was not made by the trust key {TRUST.fingerprint}")
