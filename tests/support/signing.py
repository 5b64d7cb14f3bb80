"""Keys made in the tests (ECDSA P-256, through `cryptography`), versions signed with them as
`shipyard export --sign-key` signs (the manifest's `signing` record, then model-signing's
signature over every other file), and the ways a signed version gets changed afterwards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from shipyard.core.manifest import MANIFEST_PATH, read_manifest, write_manifest
from support.versions import add_version


@dataclass(frozen=True)
class MadeKey:
    private: Path  # PEM, unencrypted PKCS#8
    public: Path  # PEM SubjectPublicKeyInfo: what a trust key is
    fingerprint: str  # sha256: of the public key (shipyard.signing.keys.public_fingerprint)


def make_key(path: Path) -> MadeKey:
    """A new P-256 key at PATH, its public half beside it (NAME.pub.pem)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from shipyard.signing.keys import public_fingerprint

    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = path.with_suffix(".pub.pem")
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return MadeKey(path, public, public_fingerprint(key.public_key()))


def sign(directory: Path, key: MadeKey) -> None:
    """DIRECTORY signed as a publish signs it: the manifest's `signing` record names the key,
    then model-signing signs every file but the signature."""
    from shipyard.signing.bundle import sign_version, signing_record
    from shipyard.signing.keys import signing_key

    signing = signing_key(key.private)
    manifest = read_manifest(directory)
    (directory / MANIFEST_PATH).unlink()  # a new file: never written through a hard link
    write_manifest(directory, replace(manifest, extra={**manifest.extra,
                                                       "signing": signing_record(signing)}))
    sign_version(directory, signing)


def signed_version(repo: Path, name: str, version: int, template: Path, key: MadeKey) -> Path:
    """A copy of the published version TEMPLATE as version VERSION of NAME, signed."""
    directory = add_version(repo, name, version, template)
    sign(directory, key)
    return directory


VARIABLES = "variables/variables.data-00000-of-00001"
WARMUP = "assets.extra/tf_serving_warmup_requests"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def tamper(directory: Path, change: str) -> None:
    """One change to a version after it was signed: "variable", "manifest", "saved_model",
    "warmup" (a byte flipped in that file), "added" (a file dropped in), or "forged" (a
    variable file changed and the manifest's checksum of it rewritten to match)."""
    if change == "variable":
        _flip(directory / VARIABLES)
    elif change == "saved_model":
        _flip(directory / "saved_model.pb")
    elif change == "warmup":
        _flip(directory / WARMUP)
    elif change == "manifest":
        path = directory / MANIFEST_PATH
        data = json.loads(path.read_text())
        data["created_at"] = "2020-01-01T00:00:00Z"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif change == "added":
        (directory / "assets.extra" / "added.txt").write_text("not signed\n")
    elif change == "forged":
        _flip(directory / VARIABLES)
        path = directory / MANIFEST_PATH
        data = json.loads(path.read_text())
        for entry in data["files"]:
            if entry["path"] == VARIABLES:
                entry["sha256"] = hashlib.sha256((directory / VARIABLES).read_bytes()).hexdigest()
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        raise ValueError(change)
