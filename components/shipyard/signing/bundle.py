"""A version directory signed, and checked, by model-signing's own signer and verifier.

The signature is `N/assets.extra/model.sig`: a model-signing (Sigstore) bundle over every other
file of the version, the manifest included, file by file (its sha256 per file). Only the
signature itself is left out of what it signs, as the library's CLI does with `--signature`
inside the model. So the library's CLI verifies what shipyard signs:

    model_signing verify key N --signature N/assets.extra/model.sig --public_key pub.pem
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.core.errors import VerificationError
from shipyard.core.manifest import SIGNATURE_PATH
from shipyard.signing.keys import CERTIFICATE, SigningKey, TrustKey


@dataclass(frozen=True)
class SignatureCheck:
    """What a verification found: `ok`, or `problem` naming the file (or the missing
    signature, or the key) at fault."""

    ok: bool
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "problem": self.problem}


def signing_record(key: SigningKey) -> dict[str, Any]:
    """What the manifest says of a version's signature: the method and the key's
    fingerprint, never the key."""
    from importlib.metadata import version

    return {"method": key.method, "key_fingerprint": key.fingerprint,
            "signature": SIGNATURE_PATH, "library": f"model-signing {version('model-signing')}"}


def sign_version(version_dir: Path, key: SigningKey) -> Path:
    """Signs every file of `version_dir` but the signature; returns the signature's path.
    An earlier signature there is replaced."""
    import model_signing

    signature = version_dir / SIGNATURE_PATH
    signature.parent.mkdir(parents=True, exist_ok=True)
    signature.unlink(missing_ok=True)
    config = model_signing.signing.Config()
    if key.method == CERTIFICATE:
        assert key.certificate is not None
        config = config.use_certificate_signer(private_key=key.private_key,
                                               signing_certificate=key.certificate,
                                               certificate_chain=list(key.chain))
    else:
        config = config.use_elliptic_key_signer(private_key=key.private_key)
    config.set_hashing_config(_hashing(version_dir)).sign(version_dir, signature)
    return signature


def check_version(version_dir: Path, trust: TrustKey) -> SignatureCheck:
    """The version's signature verified with `trust` by model-signing: ok, or what fails."""
    import model_signing

    signature = version_dir / SIGNATURE_PATH
    if not signature.is_file():
        return SignatureCheck(False, f"no signature: {SIGNATURE_PATH} is missing (the version "
                                     "was published unsigned, or the file was removed)")
    config = model_signing.verifying.Config()
    if trust.method == CERTIFICATE:
        config = config.use_certificate_verifier(certificate_chain=list(trust.chain))
    else:
        config = config.use_elliptic_key_verifier(public_key=trust.path)
    try:
        config.set_hashing_config(_hashing(version_dir)).verify(version_dir, signature)
    except Exception as err:  # the library raises ValueError and its dependencies' errors
        return SignatureCheck(False, _problem(err, trust))
    return SignatureCheck(True)


def require_signed(version_dir: Path, trust: TrustKey, what: str) -> None:
    """VerificationError (exit 4) unless the version verifies with `trust`."""
    check = check_version(version_dir, trust)
    if not check.ok:
        raise VerificationError(f"{what}: the signature does not hold: {check.problem} "
                                f"(trust key {trust.fingerprint}, {trust.path}). Nothing was "
                                "changed")


def _hashing(version_dir: Path) -> object:
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(
        paths=[Path(SIGNATURE_PATH)], ignore_git_paths=False)


def _problem(err: Exception, trust: TrustKey) -> str:
    """model-signing's answer in a line: each file that differs, was added or is missing
    (from its manifest diff, digests left out), or the key that does not match."""
    text = str(err) or type(err).__name__
    if not text.startswith("Signature mismatch"):
        return (f"the signature was not made by the trust key {trust.fingerprint}, or is "
                f"damaged: {text.strip()}")
    issues = [f"{path}: its content differs from what was signed"
              # A digest holding the byte ' makes Python's list repr escape the quotes
              # around the path (\'path\'): both spellings name the file.
              for path in re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)]
    added = re.findall(r"Extra files found in model '[^']*': ([^\"\]]+)", text)
    issues += [f"{path}: added after signing" for files in added
               for path in files.split(", ")]
    missing = re.findall(r"Missing files in model '[^']*': ([^\"\]]+)", text)
    issues += [f"{path}: signed, and missing now" for files in missing
               for path in files.split(", ")]
    return "; ".join(issues) or text
