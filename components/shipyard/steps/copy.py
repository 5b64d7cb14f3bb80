"""`shipyard copy`: a published version from one environment (a repository and an MLflow
registry: staging) into another (production), byte for byte, with its lineage.

Why not `register` again in production: that rebuilds the graph from the source model, and
nothing then proves that production serves the bytes that were tested. A copy moves the
version's files themselves, so its fingerprint is the source's.

Order, and why a re-run completes what a killed or failed one left:
- The source is resolved (`--alias` through the source registry) and must be published; its
  files must match its manifest's checksums before anything is copied. Staging is only read.
- The files are materialized into the destination's staging directory: hard links on one
  file system (published versions are never modified in place), a download from an object
  store, a copy otherwise. Their checksums are verified there, by reading them again.
- The copy is proven in fresh CPU-only processes (exporter/runtime_check.py, which imports
  nothing from shipyard): the copy and the source version each load with TF Serving's session
  loader and answer the version's own warmup requests; the answers must agree within the
  version's tolerance. On the destination's serving runtime (`--serving-runtime`, as for
  `export`) the copy is loaded and answers too.
- Then the destination is written as `register` writes it (steps.register.register_staged):
  its MLflow picks N, directory N is published, the run carries the source run's params and
  metrics, the version the usual `shipyard.*` tags and `shipyard.copied_from` (the lineage),
  and `--alias` (default `candidate`) moves through the audited path. Content the destination
  already has is reused, concurrent copies of one version give one destination version, and
  a re-run completes a killed one: the same machinery as `register` (steps.versions).

Signatures (issue 28):
- With a trust key (`trust`), the source version's signature must verify with it
  (model-signing's verifier, steps.verify) before anything is copied or any alias moves; an
  object-store source is downloaded into a temporary directory for that check.
- With a signing key (`sign`), the copy is signed with it after its proof and before it is
  published: its manifest's `signing` record names that key and N/assets.extra/model.sig is
  the destination's own. Without one the copy is byte for byte, the source's signature (if
  any) included, which still verifies with the source's key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from shipyard.core.audit import check_move
from shipyard.core.errors import UsageError, VerificationError
from shipyard.core.manifest import MANIFEST_PATH, Manifest, checksum_mismatches, write_manifest
from shipyard.core.names import validate_model_name, validate_version
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.vocabulary import (
    CANDIDATE,
    COPIED_FROM_TAG,
    COPY_PROOF_TAG,
    FINGERPRINT_TAG,
    PUBLISHED_TAG,
)
from shipyard.exporter.children import Starter, default_starter
from shipyard.exporter.runtime import (
    RuntimeCheck,
    RuntimeOutcome,
    choose_runtime,
    this_environment_check,
)
from shipyard.files.trees import materialize
from shipyard.registry.client import ModelRegistry, RegistryLocation
from shipyard.repository import open_repository
from shipyard.signing.bundle import signing_record
from shipyard.steps.export import check_compatibility
from shipyard.steps.register import RegisterResult, RunRecord, register_staged
from shipyard.steps.verify import require_trusted, signing_of
from shipyard.steps.versions import WAIT_TIMEOUT_S

log = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit: the check replays at most this many


@dataclass(frozen=True)
class CopyRequest:
    name: str
    from_repo: str
    to_repo: str
    source: RegistryLocation
    destination: RegistryLocation
    version: int | None = None
    alias: str | None = None  # resolved through the source registry
    to_name: str | None = None  # the name in the destination; the same by default
    move_alias: str = CANDIDATE
    reason: str | None = None
    pipeline_run_id: str | None = None
    serving_runtime: str | None = None
    allow_breaking: bool = False
    trust: Any = None  # signing.keys.TrustKey the source must verify with; None: not checked
    sign: Any = None  # signing.keys.SigningKey the copy is signed with; None: kept as it is

    @property
    def destination_name(self) -> str:
        return self.to_name or self.name


@dataclass
class CopyResult:
    registered: RegisterResult
    copied_from: dict[str, Any]
    transfer: str  # how the bytes moved: "hard links", "downloaded", "copied"
    proof: dict[str, Any] = field(default_factory=dict)
    # The destination version's signature as its manifest records it; None: unsigned.
    signing: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.registered.to_json(), "copied_from": self.copied_from,
                "transfer": self.transfer, "proof": self.proof, "signing": self.signing}


@dataclass(frozen=True)
class _Target:
    """What register_staged needs of a request: the destination's name, and whether a
    breaking signature change against the destination's latest version is allowed."""

    name: str
    allow_breaking: bool


def copy_version(request: CopyRequest, *, progress: Progress = NullProgress(),
                 wait_timeout_s: float = WAIT_TIMEOUT_S,
                 start_check: Starter | None = None) -> CopyResult:
    """`start_check`: how the proof's children in this environment start (by default, as this
    process starts children: exporter/children.py default_starter)."""
    validate_model_name(request.name)
    validate_model_name(request.destination_name, param="to_name")
    if (request.version is None) == (request.alias is None):
        raise UsageError("version: give exactly one of --version N and --alias ALIAS to name "
                         "the source version", param="version")
    if request.version is not None:
        validate_version(request.version)
    if (request.destination.registry_uri == request.source.registry_uri
            and request.destination_name == request.name):
        raise UsageError(
            f"to_tracking_uri: the destination is the source ({request.source.registry_uri}, "
            f"{request.name!r}): a copy goes into another registry, or under --to-name",
            param="to_tracking_uri")
    try:  # the destination alias's rules, before anything is copied
        check_move(request.move_alias, version_tags={PUBLISHED_TAG: "true"}, force=False,
                   by_rollout=False)
    except UsageError as err:
        raise UsageError(f"to_alias: {err}", param="to_alias") from None
    choice = choose_runtime(request.serving_runtime)  # a bad value fails before any work

    source_registry = ModelRegistry(request.source)
    with progress.step(f"check the source MLflow at {request.source.tracking_uri}"):
        source_registry.check_reachable()
    number = _resolve(source_registry, request)
    source_version = source_registry.version(request.name, number)
    if source_version.tags.get(PUBLISHED_TAG) != "true":
        which = "alias" if request.alias is not None else "version"
        raise UsageError(f"{which}: version {number} of {request.name!r} in the source registry "
                         "is not published (tag shipyard.published is not true): only a "
                         "published version can be copied; complete it with `shipyard "
                         "register` first", param=which)
    source_repo = open_repository(request.from_repo)
    manifest = _checked_source(source_repo, request.name, number)
    registered_as = source_version.tags.get(FINGERPRINT_TAG)
    if registered_as != manifest.fingerprint:
        raise UsageError(
            f"from_repo: {source_repo.version_location(request.name, number)} holds content "
            f"{manifest.fingerprint}, but the source registry's version {number} of "
            f"{request.name!r} is {registered_as}: --from-repo is not that registry's "
            "repository", param="from_repo")
    if request.trust is not None:
        with progress.step(f"verify the signature of the source version {number}"):
            require_trusted(source_repo, request.name, number, request.trust, manifest)
    source_run = source_registry.run(source_version.run_id)
    lineage = {"registry": public_uri(request.source.registry_uri),
               "name": request.name, "version": number, "run_id": source_version.run_id,
               "fingerprint": manifest.fingerprint,
               "repository": source_repo.version_location(request.name, number)}

    destination_registry = ModelRegistry(request.destination)
    with progress.step(f"check the destination MLflow at {request.destination.tracking_uri}"):
        destination_registry.check_reachable()
    destination_repo = open_repository(request.to_repo)
    target = _Target(request.destination_name, request.allow_breaking)
    check_compatibility(destination_repo, target, manifest.signatures)  # before any copy
    there = _published_already(destination_registry, destination_repo,
                               request.destination_name, manifest)
    if there is not None:
        # Copied and proven before (a re-run, or another copy of this version finished
        # first): only what is missing is completed, as `register` reuses a version. A
        # published version is never rewritten, so it keeps the signature it was published
        # with (its manifest, `there`, describes it).
        _warn_if_signed_otherwise(there, request)
        with destination_repo.create_staging(request.destination_name) as staging:
            registered = register_staged(
                destination_registry, destination_repo, target, staging, there, {},
                pipeline_run_id=request.pipeline_run_id, progress=progress,
                wait_timeout_s=wait_timeout_s,
                record=_record(source_run, manifest, lineage, request, 0.0))
        return CopyResult(registered, lineage, "none: reused", {}, signing_of(there))
    # Started now, so their TensorFlow imports overlap the copy.
    checks = _ProofChecks(choice, start_check or default_starter())
    try:
        with destination_repo.create_staging(request.destination_name) as staging:
            started = time.monotonic()
            with progress.step(f"copy version {number}'s files"):
                transfer = _materialize(source_repo, request.name, number, staging)
                server_side = getattr(destination_repo, "server_side_from", None)
                if server_side is not None and server_side(staging.copy_from):
                    transfer = "downloaded for the proof; copied server-side in the store"
            with progress.step("verify the copy's checksums"):
                problems = checksum_mismatches(staging.path, manifest)
                if problems:
                    raise VerificationError(
                        "the copy's files differ from the source's manifest after the copy; "
                        "nothing was published:\n" + "\n".join(f"  - {p}" for p in problems))
            copy_seconds = time.monotonic() - started
            with progress.step("prove the copy in fresh CPU-only processes"):
                proof = checks.prove(source_repo, request.name, number, staging.path,
                                     manifest)
            if request.sign is not None:
                with progress.step("sign the copy with the destination's key"):
                    manifest = _resign(staging.path, manifest, request.sign)
            record = _record(source_run, manifest, lineage, request, copy_seconds, proof)
            registered = register_staged(
                destination_registry, destination_repo, target, staging, manifest, {},
                pipeline_run_id=request.pipeline_run_id, progress=progress,
                wait_timeout_s=wait_timeout_s, record=record)
    finally:
        checks.close()
    return CopyResult(registered, lineage, transfer, proof, signing_of(manifest))


def _resign(directory: Path, manifest: Manifest, key: Any) -> Manifest:
    """The staged copy signed with `key`: its manifest's `signing` record names the key, and
    the signature covers every other file, that manifest included. The staged files may be
    hard links to the source's (one file system): the manifest and the signature are new
    files put in place of the links, never written through them, so the source is unchanged
    (sign_version removes an earlier signature before it writes)."""
    from shipyard.signing.bundle import sign_version

    signed = replace(manifest, extra={**manifest.extra, "signing": signing_record(key)})
    (directory / MANIFEST_PATH).unlink()
    write_manifest(directory, signed)
    sign_version(directory, key)
    return signed


def _warn_if_signed_otherwise(there: Manifest, request: CopyRequest) -> None:
    """A reused version signed otherwise than --sign-key asks is said, not changed."""
    if request.sign is None:
        return
    said = (signing_of(there) or {}).get("key_fingerprint")
    if said != request.sign.fingerprint:
        log.warning("%s: the destination's version of this content is reused as it was "
                    "published (%s), not signed again with %s: published versions are never "
                    "rewritten. To publish it signed with that key, copy it under another "
                    "--to-name", request.destination_name,
                    f"signed with {said}" if said else "unsigned", request.sign.fingerprint)


def _published_already(registry: ModelRegistry, repo: Any, name: str,
                       manifest: Manifest) -> Manifest | None:
    """The destination's manifest of this version if it holds it already: published in its
    registry, and its directory holding exactly the source's files (a fingerprint names
    content, not bytes: a separate export of the same model has the fingerprint and other
    bytes); None otherwise.

    "Exactly the source's files" compares the manifests' `files`, which list every file but
    the manifest itself and the signature (core.manifest.list_files). A copy signed with the
    destination's key differs from its source in just those two (its manifest's `signing`
    record, and model.sig), so a re-run of that copy still finds it here and completes it
    (idempotent), while a version of other bytes is still refused."""
    for version in registry.versions_with_fingerprint(name, manifest.fingerprint):
        if version.tags.get(PUBLISHED_TAG) != "true":
            continue
        number = int(version.version)
        location = repo.version_location(name, number)
        there = repo.read_manifest(name, number)
        if there is None:
            raise VerificationError(
                f"the destination's registry has this content published as version {number} "
                f"of {name!r}, but {location} holds no version: restore it (or delete the "
                "registered version) before copying again; nothing was changed")
        if there.files != manifest.files:
            raise VerificationError(
                f"the destination already holds this content as version {number} of {name!r} "
                f"({location}), from another export (same fingerprint, other bytes): a copy "
                "would not be byte for byte. Serve that version, or copy under another "
                "--to-name; nothing was changed")
        problems = repo.checksum_problems(name, number, there)
        if problems:
            raise VerificationError(
                f"the destination's version {number} of {name!r} ({location}) does not match "
                "its manifest; nothing was changed:\n" + "\n".join(f"  - {p}" for p in problems))
        return there
    return None


def public_uri(uri: str) -> str:
    """`uri` without its user and password (a database URI may carry them): what is recorded
    in the destination's tags, descriptions and audit trail."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _resolve(registry: ModelRegistry, request: CopyRequest) -> int:
    if request.version is not None:
        if registry.find_version(request.name, request.version) is None:
            raise UsageError(f"version: {request.name!r} has no version {request.version} in "
                             f"the source registry ({request.source.tracking_uri})",
                             param="version")
        return request.version
    aliases = registry.aliases(request.name) or {}
    if request.alias not in aliases:
        raise UsageError(f"alias: {request.name!r} has no alias {request.alias!r} in the source "
                         f"registry ({request.source.tracking_uri}); its aliases: "
                         f"{dict(sorted(aliases.items())) or 'none'}", param="alias")
    return aliases[request.alias]


def _checked_source(repo: Any, name: str, version: int) -> Manifest:
    location = repo.version_location(name, version)
    manifest = repo.read_manifest(name, version)
    if manifest is None:
        raise VerificationError(f"{location} has no shipyard.json: it is not a version shipyard "
                                "published (or --from-repo is not the registry's repository); "
                                "nothing was copied")
    problems = repo.checksum_problems(name, version, manifest)
    if problems:
        raise VerificationError(
            f"the source version {location} does not match its manifest; nothing was "
            "copied:\n" + "\n".join(f"  - {p}" for p in problems)
            + "\nRepublish it from its source model, or copy another version.")
    return manifest


def _materialize(repo: Any, name: str, version: int, staging: Any) -> str:
    """The version's files in `staging`; how they came there. From an object store they are
    downloaded (the proof loads them here), and a destination on the same store copies them
    server-side when it publishes (`staging.copy_from`)."""
    into = staging.path
    location = repo.version_location(name, version)
    materialize(location, into)
    local = repo.local_version_dir(name, version)
    if local is None:
        staging.copy_from = location
        return "downloaded"
    probe = next((p for p in local.rglob("*") if p.is_file()), None)
    if probe is not None and (into / probe.relative_to(local)).stat().st_ino == probe.stat().st_ino:
        return "hard links"
    return "copied"


def _record(source_run: Any, manifest: Manifest, lineage: dict[str, Any],
            request: CopyRequest, copy_seconds: float,
            proof: dict[str, Any] | None = None) -> RunRecord:
    """The destination's record. `proof`: what the copy's proof found, recorded on the version
    it created (None for a version reused: its proof is the one recorded when it was made)."""
    params = dict(source_run.data.params)
    metrics = {**source_run.data.metrics, "copy_seconds": copy_seconds}
    reason = request.reason or (f"copied from {lineage['registry']} {lineage['name']} version "
                                f"{lineage['version']} ({manifest.fingerprint})")
    tags = {COPIED_FROM_TAG: json.dumps(lineage, sort_keys=True)}
    if proof is not None:
        tags[COPY_PROOF_TAG] = json.dumps(proof, sort_keys=True)
    return RunRecord(params=params, metrics=metrics, tags=tags, alias=request.move_alias,
                     reason=reason)


class _ProofChecks:
    """The fresh CPU-only processes that prove the copy: the source version and the copy in
    this environment, and the copy on the serving runtime when one is chosen."""

    def __init__(self, choice: Any, start: Starter | None):
        self.source = this_environment_check(start)
        self.copy = this_environment_check(start)
        self.runtime: RuntimeCheck | None = (RuntimeCheck(choice) if choice.version is not None
                                             else None)

    def prove(self, source_repo: Any, name: str, version: int, copy_dir: Path,
              manifest: Manifest) -> dict[str, Any]:
        from shipyard.files.trees import local_tree

        plan = [{"key": f"record-{i}|"} for i in range(MAX_WARMUP_RECORDS)]
        atol, rtol = _tolerance(manifest)
        with local_tree(source_repo.version_location(name, version)) as source_dir:
            source = self.source.run(Path(source_dir).resolve(), plan)
        copied = self.copy.run(copy_dir.resolve(), plan)
        proof = {"fresh_load": _agreement(copied, source, atol, rtol, "the copy")}
        if not manifest.warmup_records:
            proof["fresh_load"]["note"] = "load only: the version has no warmup requests"
        if self.runtime is not None:
            outcome = self.runtime.run(copy_dir.resolve(), plan)
            proof["serving_runtime"] = (
                _agreement(outcome, source, atol, rtol, f"the copy on TensorFlow "
                                                        f"{outcome.version}")
                if outcome.outputs is not None else outcome.record)
        return proof

    def close(self) -> None:
        for check in (self.source, self.copy, self.runtime):
            if check is not None:
                check.close()


def _tolerance(manifest: Manifest) -> tuple[float, float]:
    tolerance = manifest.spec.get("tolerance") or {}
    return float(tolerance.get("atol", 1e-5)), float(tolerance.get("rtol", 1e-5))


def _agreement(got: RuntimeOutcome, expected: RuntimeOutcome, atol: float, rtol: float,
               what: str) -> dict[str, Any]:
    """`got`'s answers to the warmup requests against the source version's; refused
    (VerificationError) where they differ."""
    from shipyard.exporter.verifier import compare

    assert got.outputs is not None and expected.outputs is not None
    ours, theirs = np.load(got.outputs), np.load(expected.outputs)
    problems = [f"output {key!r} is missing" for key in sorted(set(theirs.files)
                                                                 - set(ours.files))]
    worst = 0.0
    for key in sorted(set(ours.files) & set(theirs.files)):
        error, problem = compare(ours[key], theirs[key], atol, rtol)
        worst = max(worst, float(error or 0.0))
        if problem:
            problems.append(f"{key}: {problem}")
    if problems:
        raise VerificationError(f"{what} answers its warmup requests otherwise than the source "
                                "version; nothing was published:\n"
                                + "\n".join(f"  - {p}" for p in problems[:20]))
    return {**got.record, "outputs_compared": len(ours.files), "max_abs_error": worst}
