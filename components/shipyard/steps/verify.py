"""`shipyard verify`, and the signature check the serving commands make before they use a
version: its files against the manifest's checksums, and its signature against a trust key.

The signature is checked by model-signing's own verifier (signing.bundle.check_version), on
the version's files where they are: a local repository's directory itself, or, for an object
store, a download of the version into a temporary directory (model-signing reads local files;
the download is removed afterwards). The checksums are the repository's own check
(`checksum_problems`, as `push` verifies a version).

A trust key (`--verify-key PEM`, $SHIPYARD_VERIFY_KEY, a rollout policy's `verify_key`) is what
a signature must verify with; without one, signatures are not checked, and `verify` says so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from shipyard.core.errors import UsageError, VerificationError
from shipyard.core.manifest import MANIFEST_NAME, Manifest
from shipyard.core.names import validate_model_name, validate_version
from shipyard.core.repository import ModelRepository
from shipyard.signing.keys import TrustKey

NO_TRUST_KEY = "not checked: no trust key (pass --verify-key PEM or set SHIPYARD_VERIFY_KEY)"


@dataclass(frozen=True)
class VerifyResult:
    name: str
    version: int
    location: str
    checksum_problems: list[str]
    checked_files: int  # files the manifest lists (0 without a manifest)
    signature_checked: bool  # False: no trust key
    signature_problem: str | None  # None: verified (or not checked)
    trust: TrustKey | None
    recorded: dict[str, Any] | None  # the manifest's `signing` record; None: unsigned

    @property
    def checksums_ok(self) -> bool:
        return not self.checksum_problems

    @property
    def signature_ok(self) -> bool | None:
        """True verified, False failed, None not checked (no trust key)."""
        return None if not self.signature_checked else self.signature_problem is None

    @property
    def ok(self) -> bool:
        """The checksums hold and so does the signature (issue 28: exit 0 only when both
        hold). Without a trust key the signature was not checked, so the version is not
        verified: a pipeline step `shipyard verify` must not pass on an unchecked signature."""
        return self.checksums_ok and self.signature_ok is True

    def to_json(self) -> dict[str, Any]:
        trust = (None if self.trust is None else
                 {"fingerprint": self.trust.fingerprint, "method": self.trust.method,
                  "path": str(self.trust.path)})
        return {"name": self.name, "version": self.version, "location": self.location,
                "ok": self.ok,
                "checksums": {"ok": self.checksums_ok, "files": self.checked_files,
                              "problems": self.checksum_problems},
                "signature": {"checked": self.signature_checked, "ok": self.signature_ok,
                              "problem": (self.signature_problem if self.signature_checked
                                          else NO_TRUST_KEY),
                              "trust_key": trust, "recorded": self.recorded}}


def signing_of(manifest: Manifest | None) -> dict[str, Any] | None:
    """The manifest's record of the version's signature (method, key fingerprint, signature
    file, library), or None for an unsigned version. A record says who signed, not that the
    signature holds: only a check with a trust key says that."""
    record = manifest.extra.get("signing") if manifest is not None else None
    return record if isinstance(record, dict) else None


def verify_version(repo: ModelRepository, name: str, version: int,
                   trust: TrustKey | None) -> VerifyResult:
    """Checksums and (with `trust`) signature of version N, each reported; raises only when
    there is no version N to check (UsageError naming `version`)."""
    validate_model_name(name)
    validate_version(version)
    location = repo.version_location(name, version)
    links = repo.symlinked_versions(name)
    if version in links:
        problem = (f"{location} is a symlink to {links[version]}: shipyard did not publish it "
                   "and neither follows nor verifies it")
        return VerifyResult(name, version, location, [problem], 0, trust is not None,
                            problem if trust is not None else None, trust, None)
    if not repo.version_exists(name, version):
        raise UsageError(f"version {version}: {location} does not exist; versions of {name} in "
                         f"{repo.location}: {', '.join(map(str, repo.versions(name))) or 'none'}",
                         param="version")
    manifest, problems = None, []
    try:
        manifest = repo.read_manifest(name, version)
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable or malformed
        problems.append(f"{MANIFEST_NAME}: unreadable ({err})")
    else:
        if manifest is None:
            problems.append(f"no {MANIFEST_NAME}: {location} is not a version shipyard "
                            "published")
        else:
            problems = repo.checksum_problems(name, version, manifest)
    signature_problem = (signature_check(repo, name, version, trust, manifest)
                         if trust is not None else None)
    return VerifyResult(name, version, location, problems,
                        len(manifest.files) if manifest is not None else 0,
                        trust is not None, signature_problem, trust, signing_of(manifest))


def signature_check(repo: ModelRepository, name: str, version: int, trust: TrustKey,
                    manifest: Manifest | None = None) -> str | None:
    """What fails in version N's signature against `trust` (model-signing's verifier), or
    None when it verifies."""
    from shipyard.signing.bundle import check_version

    with version_files(repo, name, version) as directory:
        check = check_version(directory, trust)
    if check.ok:
        return None
    record = signing_of(manifest)
    said = record.get("key_fingerprint") if record else None
    if said and said != trust.fingerprint and not (check.problem or "").startswith("no "):
        # The record is part of what failed to verify: a hint, not a finding.
        return f"{check.problem} (its manifest says it was signed with key {said})"
    return check.problem


def require_trusted(repo: ModelRepository, name: str, version: int, trust: TrustKey | None,
                    manifest: Manifest | None = None) -> None:
    """VerificationError (exit 4) naming the version, what fails (a file, or the missing
    signature) and the trust key, unless version N's signature verifies with `trust`; nothing
    is checked without a trust key. Callers call it before they change anything."""
    if trust is None:
        return
    if manifest is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            manifest = repo.read_manifest(name, version)
    problem = signature_check(repo, name, version, trust, manifest)
    if problem is not None:
        raise VerificationError(
            f"{name} version {version} ({repo.version_location(name, version)}): its signature "
            f"does not verify with the trust key {trust.fingerprint} ({trust.path}): {problem}. "
            "It is refused; nothing was changed")


@contextlib.contextmanager
def version_files(repo: ModelRepository, name: str, version: int) -> Iterator[Path]:
    """Version N's files as a local directory: the repository's own, or a temporary download
    of an object store's (removed afterwards)."""
    local = repo.local_version_dir(name, version)
    if local is not None:
        yield local
        return
    from shipyard.files.trees import local_tree

    with local_tree(repo.version_location(name, version)) as directory:
        yield Path(directory)
