"""Signing at publish (issue 28): `shipyard export --sign-key` (and $SHIPYARD_SIGNING_KEY, and
a certificate chain) signs the verified version before it becomes visible; the library's own
CLI (`python -m model_signing verify`) accepts what shipyard signs. Keys and certificates are
made here with `cryptography`; the exports are real."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

from support.specs import SEQUENTIAL_SPEC as SPEC
from support.specs import write_spec

from shipyard.core.manifest import SIGNATURE_PATH, read_manifest


def ec_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = path.with_name(path.stem + ".pub.pem")
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


def certificate(path: Path, subject_key, issuer_key, *, ca: bool, issuer_name: str = "shipyard CA",
                name: str = "shipyard CA"):
    """A certificate of `subject_key` by `issuer_key`: a CA, or a code-signing leaf."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = (builder
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False))
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def model_signing_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", *args],
                          capture_output=True, text=True, timeout=120)


def test_export_signs_the_verified_version_and_the_library_accepts_it(cli, models, tmp_path,
                                                                      monkeypatch):
    from shipyard.signing.keys import public_fingerprint

    key, public = ec_key(tmp_path / "key.pem")
    monkeypatch.delenv("SHIPYARD_SIGNING_KEY", raising=False)
    repo, spec = tmp_path / "repo", write_spec(tmp_path, SPEC)
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--sign-key", str(tmp_path / "key.pem"), "--json")
    assert result.exit_code == 0, result.stderr
    version = repo / "m" / "1"
    manifest = read_manifest(version)
    signing = manifest.extra["signing"]
    assert signing["method"] == "key" and signing["signature"] == SIGNATURE_PATH
    assert signing["key_fingerprint"] == public_fingerprint(key.public_key())
    assert signing["library"].startswith("model-signing ")
    # The manifest names the key, never holds it; the signature is not among its files.
    text = (version / "assets.extra" / "shipyard.json").read_text()
    assert "PRIVATE KEY" not in text and (tmp_path / "key.pem").read_text()[40:80] not in text
    assert SIGNATURE_PATH not in [f["path"] for f in manifest.files]
    assert (version / SIGNATURE_PATH).is_file()

    accepted = model_signing_cli("key", str(version), "--signature",
                                 str(version / SIGNATURE_PATH), "--public_key", str(public))
    assert accepted.returncode == 0 and "Verification succeeded" in accepted.stdout, accepted
    # The library's check fails on a changed byte, naming the file: the signature covers it.
    variables = version / "variables" / "variables.data-00000-of-00001"
    data = bytearray(variables.read_bytes())
    data[-1] ^= 1
    variables.write_bytes(bytes(data))
    refused = model_signing_cli("key", str(version), "--signature",
                                str(version / SIGNATURE_PATH), "--public_key", str(public))
    assert refused.returncode != 0
    assert "variables/variables.data-00000-of-00001" in refused.stdout + refused.stderr


def test_without_a_key_the_version_is_published_unsigned_and_a_bad_key_is_refused_first(
        cli, models, tmp_path, monkeypatch):
    monkeypatch.delenv("SHIPYARD_SIGNING_KEY", raising=False)
    repo, spec = tmp_path / "repo", write_spec(tmp_path, SPEC)
    (tmp_path / "not-a-key.pem").write_text("hello")
    for args, message in (
            (["--sign-key", str(tmp_path / "missing.pem")],
             r"--sign-key: cannot read .*missing.pem \(No such file or directory\)"),
            (["--sign-key", str(tmp_path / "not-a-key.pem")],
             r"--sign-key: .*not-a-key.pem is not an unencrypted PEM private key"),
            (["--sign-cert", str(tmp_path / "c.pem")],
             r"--sign-key: a signing certificate .* needs its private key: pass --sign-key")):
        refused = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                      str(repo), "--name", "m", *args)
        assert refused.exit_code == 2, refused.stderr
        assert re.search(message, refused.stderr), refused.stderr
    assert not (repo / "m").exists() or not any((repo / "m").iterdir())

    plain = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                str(repo), "--name", "m")
    assert plain.exit_code == 0, plain.stderr
    assert "signing" not in read_manifest(repo / "m" / "1").extra
    assert not (repo / "m" / "1" / SIGNATURE_PATH).exists()


def test_a_certificate_chain_signs_through_the_certificate_method(cli, models, tmp_path,
                                                                  monkeypatch):
    """$SHIPYARD_SIGNING_KEY and $SHIPYARD_SIGNING_CERT: the leaf certificate of the key,
    issued by a CA the verifier trusts; the library's certificate verifier accepts it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(tmp_path / "ca.pem", ca_key, ca_key, ca=True)
    leaf_key, _ = ec_key(tmp_path / "leaf.pem")
    leaf = certificate(tmp_path / "leaf.crt.pem", leaf_key, ca_key, ca=False,
                       name="shipyard exporter")
    monkeypatch.setenv("SHIPYARD_SIGNING_KEY", str(tmp_path / "leaf.pem"))
    monkeypatch.setenv("SHIPYARD_SIGNING_CERT", str(leaf))
    monkeypatch.setenv("SHIPYARD_SIGNING_CHAIN", str(ca))
    repo, spec = tmp_path / "repo", write_spec(tmp_path, SPEC)
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--json")
    assert result.exit_code == 0, result.stderr
    version = repo / "m" / str(json.loads(result.stdout)["version"])
    assert read_manifest(version).extra["signing"]["method"] == "certificate"
    accepted = model_signing_cli("certificate", str(version), "--signature",
                                 str(version / SIGNATURE_PATH), "--certificate_chain", str(ca))
    assert accepted.returncode == 0, (accepted.stdout, accepted.stderr)

    # A CA that did not issue the signing certificate is not trusted.
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = certificate(tmp_path / "other-ca.pem", other_key, other_key, ca=True,
                           name="another CA", issuer_name="another CA")
    refused = model_signing_cli("certificate", str(version), "--signature",
                                str(version / SIGNATURE_PATH), "--certificate_chain",
                                str(other_ca))
    assert refused.returncode != 0, refused.stdout
