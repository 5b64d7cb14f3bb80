"""`shipyard verify`: a published version's checksums and signature, each reported."""

from __future__ import annotations

from typing import Any

import click

from shipyard.cli.options import json_option, serving_repo_options, verify_key_option
from shipyard.cli.output import emit


@click.command("verify")
@serving_repo_options
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@verify_key_option
@json_option("Print {name, version, location, ok, checksums, signature} as JSON on stdout "
             "(also when the check fails).")
def verify_command(repo: str, name: str, version: int, verify_key: str | None,
                   as_json: bool) -> None:
    """Check version N of NAME: its files against shipyard.json's checksums, and its signature
    (N/assets.extra/model.sig) against the trust key, with model-signing's own verifier.

    Each part is reported: the files that differ or are missing; the file whose content
    differs from what was signed, a file added after signing, a missing signature, or a
    signature made with another key. An object store's version is downloaded into a
    temporary directory for the signature check.

    Without a trust key (--verify-key or $SHIPYARD_VERIFY_KEY) the checksums are still
    checked and reported, but the signature is "not checked: no trust key", and the version
    is not verified (exit 4): a version passes only when both hold.

    Exit codes: 0 the checksums hold and the signature verifies with the trust key, 4
    either fails or the signature could not be checked, 2 no version N or a bad trust key,
    1 anything else.
    """
    from shipyard.core.errors import VerificationError
    from shipyard.repository import open_repository
    from shipyard.signing.keys import trust_key
    from shipyard.steps.verify import verify_version

    trust = trust_key(verify_key)
    result = verify_version(open_repository(repo), name, version, trust)
    doc = result.to_json()
    emit(doc, as_json, describe_verify(doc))
    if not result.ok:
        failed = [part for part, ok in (("checksums", result.checksums_ok),
                                        ("signature", result.signature_ok is not False))
                  if not ok]
        problems = [f"{' and '.join(failed)} failed; see above"] if failed else []
        if not result.signature_checked:
            problems.append("the signature was not checked (no trust key: pass --verify-key "
                            "PEM or set SHIPYARD_VERIFY_KEY)")
        raise VerificationError(f"{name} version {version} ({result.location}): "
                                f"{'; '.join(problems)}", document=doc)


def describe_verify(doc: dict[str, Any]) -> str:
    failed = doc["checksums"]["ok"] is False or doc["signature"]["ok"] is False
    lines = [f"{doc['name']} version {doc['version']} at {doc['location']}: "
             + ("verified" if doc["ok"] else "FAILED" if failed else "NOT VERIFIED")]
    checksums = doc["checksums"]
    if checksums["ok"]:
        lines.append(f"  checksums: ok ({checksums['files']} files match shipyard.json)")
    else:
        lines.append("  checksums: FAILED")
        lines += [f"    - {p}" for p in checksums["problems"]]
    signature, recorded = doc["signature"], doc["signature"]["recorded"]
    by = (f"signed with key {recorded.get('key_fingerprint')} (method {recorded.get('method')})"
          if recorded else "its manifest records no signature")
    if not signature["checked"]:
        lines.append(f"  signature: {signature['problem']}; {by}")
    elif signature["ok"]:
        trust = signature["trust_key"]
        lines.append(f"  signature: ok, verifies with the trust key {trust['fingerprint']} "
                     f"({trust['path']}); {by}")
    else:
        trust = signature["trust_key"]
        lines.append(f"  signature: FAILED with the trust key {trust['fingerprint']} "
                     f"({trust['path']})")
        lines += [f"    - {p}" for p in signature["problem"].split("; ")]
    return "\n".join(lines)
