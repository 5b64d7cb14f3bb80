"""The keys of signing and of verification, read from PEM files and named by fingerprint.

- A signing key: `--sign-key PEM` or $SHIPYARD_SIGNING_KEY, an elliptic-curve private key
  (what model-signing's key method signs with). With `--sign-cert PEM` (or
  $SHIPYARD_SIGNING_CERT) and optionally `--sign-chain PEM`, model-signing's certificate
  method signs instead, and the bundle carries the certificate.
- A trust key: `--verify-key PEM` or $SHIPYARD_VERIFY_KEY (or `verify_key:` in a rollout
  policy): the public key a version's signature must verify with; or a CA certificate (chain)
  that signing certificates must chain up to.

The fingerprint is the SHA-256 of the public key's DER SubjectPublicKeyInfo, the same for a
private key, its public key and a certificate of it, so a manifest that records it names the
key without holding it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.core.errors import UsageError

SIGNING_KEY_ENV = "SHIPYARD_SIGNING_KEY"
SIGNING_CERT_ENV = "SHIPYARD_SIGNING_CERT"
SIGNING_CHAIN_ENV = "SHIPYARD_SIGNING_CHAIN"
VERIFY_KEY_ENV = "SHIPYARD_VERIFY_KEY"
KEY, CERTIFICATE = "key", "certificate"  # model-signing's methods


@dataclass(frozen=True)
class SigningKey:
    private_key: Path
    fingerprint: str
    method: str = KEY
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class TrustKey:
    """What a signature must verify with: a public key (method key), or certificates that
    a signing certificate must chain up to (method certificate)."""

    path: Path
    method: str
    fingerprint: str  # of the public key, or of the CA certificate's key
    chain: tuple[Path, ...] = field(default_factory=tuple)


def signing_key(key: str | Path | None, certificate: str | Path | None = None,
                chain: tuple[str | Path, ...] = (), *, param: str = "sign_key"
                ) -> SigningKey | None:
    """The signing key given by the flags, else by the environment; None when neither
    names one (versions are then published unsigned). UsageError naming the flag for a file
    that is missing or holds no EC private key."""
    key = key or os.environ.get(SIGNING_KEY_ENV) or None
    certificate = certificate or os.environ.get(SIGNING_CERT_ENV) or None
    chain = tuple(chain) or tuple(p for p in os.environ.get(SIGNING_CHAIN_ENV, "").split(",")
                                  if p)
    if key is None:
        if certificate is not None:
            raise UsageError(f"{param}: a signing certificate ({certificate}) needs its "
                             "private key: pass --sign-key PEM", param=param)
        return None
    path = Path(key).expanduser().resolve()
    private = _private_key(path, param)
    fingerprint = public_fingerprint(private.public_key())
    if certificate is None:
        return SigningKey(path, fingerprint)
    cert_path = Path(certificate).expanduser().resolve()
    cert = _certificate(cert_path, "sign_cert")
    if public_fingerprint(cert.public_key()) != fingerprint:
        raise UsageError(f"sign_cert: {cert_path} certifies another key than {path} "
                         f"({public_fingerprint(cert.public_key())}, not {fingerprint})",
                         param="sign_cert")
    chain_paths = tuple(Path(c).expanduser().resolve() for c in chain)
    for each in chain_paths:
        _certificate(each, "sign_chain")
    return SigningKey(path, fingerprint, CERTIFICATE, cert_path, chain_paths)


def trust_key(given: str | Path | None, *, param: str = "verify_key") -> TrustKey | None:
    """The trust key given, else $SHIPYARD_VERIFY_KEY; None when there is none (versions
    are then not checked for a signature). A PEM public key is trusted as it is; a PEM
    certificate (or several) is a CA chain for certificate-signed versions."""
    given = given or os.environ.get(VERIFY_KEY_ENV) or None
    if given is None:
        return None
    path = Path(given).expanduser().resolve()
    text = _read(path, param)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN CERTIFICATE-----" in text:
        try:
            certificates = x509.load_pem_x509_certificates(text)
        except ValueError as err:
            raise UsageError(f"{param}: {path} is not a PEM certificate chain ({err})",
                             param=param) from None
        return TrustKey(path, CERTIFICATE, public_fingerprint(certificates[0].public_key()),
                        (path,))
    try:
        public = serialization.load_pem_public_key(text)
    except ValueError:
        try:  # a private key given as the trust key: its public half is what is trusted
            public = serialization.load_pem_private_key(text, password=None).public_key()
        except (ValueError, TypeError):
            raise UsageError(f"{param}: {path} holds no PEM public key or certificate; "
                             "export one with `openssl ec -in key.pem -pubout -out pub.pem`",
                             param=param) from None
    return TrustKey(path, KEY, public_fingerprint(public))


def public_fingerprint(public_key: object) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def public_pem(key: SigningKey) -> bytes:
    """The public half of a signing key, PEM: what a verifier is given."""
    from cryptography.hazmat.primitives import serialization

    return _private_key(key.private_key, "sign_key").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_key(path: Path, param: str) -> object:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    text = _read(path, param)
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{param}: {path} is not an unencrypted PEM private key ({err})",
                         param=param) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{param}: {path} is a {type(key).__name__}; model-signing signs "
                         "with elliptic-curve keys (e.g. `openssl ecparam -name prime256v1 "
                         "-genkey -noout -out key.pem`)", param=param)
    return key


def _certificate(path: Path, param: str) -> object:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(_read(path, param))
    except ValueError as err:
        raise UsageError(f"{param}: {path} is not a PEM certificate ({err})",
                         param=param) from None


def _read(path: Path, param: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UsageError(f"{param}: cannot read {path} ({err.strerror})", param=param) from None
