"""The one place that strings the steps together: export -> verify -> publish.

The CLI, the TFX executor and the KFP components all call this module, so a fix to the flow
lands in all three at once. TensorFlow is imported only inside the steps that need it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from shipyard import __version__
from shipyard.core.errors import BreakingChangeError, ShipyardError, VerificationError
from shipyard.core.manifest import (
    MANIFEST_DIR,
    Manifest,
    fingerprint,
    list_files,
    write_manifest,
)
from shipyard.core.names import validate_model_name, validate_version
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.signatures import breaking_changes
from shipyard.core.spec import ExportSpec
from shipyard.exporter.reference_process import EXPECTED_NAME, ReferenceFailed
from shipyard.exporter.runtime import (
    RuntimeCheck,
    choose_runtime,
    compare_runtime_outputs,
    start_runtime_check,
)
from shipyard.exporter.verifier import DEFAULT_TIMEOUT_S, VerifierProcess, start_verifier
from shipyard.files.storage import tree_bytes, writing_export, writing_verifier_inputs
from shipyard.files.trees import empty_directory
from shipyard.repository import StagingDir, open_repository
from shipyard.signing import bundle as signing

log = logging.getLogger(__name__)

# The size of an export's variables up to which its verifier starts while the independent
# reference computes. On 2 cores (bench/export.py, medians of 2): at 130 MiB, starting early
# took the wall time from 1.03x to 0.98x the raw baseline; at 1 GiB, from 0.94x to 1.05x
# (the two loads of the model at once, in the reference and the verifier, slowed both).
EARLY_VERIFY_MAX_BYTES = 256 << 20

VerifierLauncher = Callable[[], VerifierProcess]


@dataclass(frozen=True)
class ExportRequest:
    model: Path
    spec: ExportSpec
    repo: str | Path  # a local path or an fsspec URL (gs://, s3://, ...)
    name: str
    version: int | None = None
    imports: tuple[str, ...] = ()
    unsafe: bool = False
    allow_breaking: bool = False
    device: str | None = None  # where the export runs, e.g. "/GPU:0"; verification: CPU
    # The TensorFlow of the serving image to verify on ("2.19"), "none", or None for the
    # default (SHIPYARD_SERVING_RUNTIME, else the image the manifests render).
    serving_runtime: str | None = None
    # Real tf.Examples for the tf_example endpoints' verification instead of generated ones: a
    # TFRecord file, a glob or a directory of them (ExampleGen's Split-<name>/, gzip detected),
    # a path or an fsspec URL. Warmup is written from them only if warmup_from_examples (real
    # examples may hold personal data).
    examples: str | None = None
    examples_limit: int = 16  # at most this many real examples are read
    warmup_from_examples: bool = False
    # Where `model` came from when it is a local copy (a Model artifact downloaded from an
    # object store): what the manifest and the MLflow run record as the source's path,
    # rather than a temporary directory that is gone once the export ends.
    source_location: str | None = None
    # The key the version is signed with after verification, before it is published
    # (signing.keys.SigningKey); None: published unsigned.
    sign: Any = None


@dataclass
class ExportResult:
    name: str
    version: int
    path: str  # the version directory: an absolute path or a URL
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "fingerprint": self.manifest.fingerprint,
            "endpoints": self.manifest.endpoint_names(),
            "variable_collections": self.manifest.variable_collections,
            "parity": {k: v["max_abs_error"] for k, v in self.manifest.parity.items()},
        }


def export_model(request: ExportRequest, *, progress: Progress = NullProgress(),
                 launch_verifier: VerifierLauncher = start_verifier) -> ExportResult:
    """Exports, verifies and publishes `request.model` as <repo>/<name>/<N>; returns N and more.

    Nothing becomes visible as a version unless every step succeeded.
    """
    from shipyard.exporter.source import check_imports, check_model_file, check_model_path

    validate_model_name(request.name)
    choose_runtime(request.serving_runtime)  # a bad value fails before anything starts
    check_model_path(request.model)  # before anything starts or is created
    repo = open_repository(request.repo)
    if request.version is not None:
        validate_version(request.version)
        repo.ensure_version_free(request.name, request.version)
    check_model_file(request.model)  # a corrupt file fails here, not in a started export
    check_imports(request.imports)
    # Started first, so its TensorFlow import overlaps loading and writing the model.
    verifier = launch_verifier()
    try:
        with repo.create_staging(request.name) as staging:
            manifest, timings = stage_export(request, repo, staging, verifier, progress)
            with progress.step("publish"):
                version = repo.publish(
                    staging, request.name, request.version,
                    precheck=lambda: check_compatibility(repo, request, manifest.signatures))
            return ExportResult(request.name, version, repo.version_location(request.name, version),
                                manifest, timings)
    finally:
        verifier.close()


def stage_export(request: ExportRequest, repo: ModelRepository, staging: StagingDir,
                 verifier: VerifierProcess, progress: Progress
                 ) -> tuple[Manifest, dict[str, float]]:
    """Writes and verifies the export into `staging`; returns its manifest and step timings."""
    runtime = start_runtime_check(choose_runtime(request.serving_runtime))
    try:
        # A full disk, read-only repository or missing permission: one clear StorageError.
        with writing_export(staging.path, request.model,
                            local=repo.is_local):
            return _stage_export(request, repo, staging, verifier, runtime, progress)
    finally:
        runtime.close()


@dataclass
class _Staged:
    """An export written to staging, with the outputs of the exporting process's model and
    how they compare with the independent reference's."""

    model: Any  # exporter.source.SourceModel
    built: Any  # exporter.archive.BuiltArchive
    signatures: dict[str, Any]
    rng_states: list[Any]
    references: list[Any]  # exporter.reference.Reference, in the verifier's call order
    warmed: list[Any]  # the references whose inputs went into the warmup file
    warmup_records: int
    digests: dict[str, list[str]]
    inputs_path: Path
    expected_path: Path  # the independent reference's outputs
    independent: dict[str, Any]  # how the reference process loaded and answered
    differences: list[str]  # where `references` differ from the independent outputs
    verify_later: dict[str, Any] | None  # the verifier's job, if it has not been started


def _stage_export(request: ExportRequest, repo: ModelRepository, staging: StagingDir,
                  verifier: VerifierProcess, runtime: Any, progress: Progress
                  ) -> tuple[Manifest, dict[str, float]]:
    started = time.monotonic()
    # The independent reference loads the source in its own process while this one exports.
    verifier.reference.load(request.model, imports=request.imports, unsafe=request.unsafe)
    with contextlib.ExitStack() as spare:
        return _checked_export(request, repo, staging, verifier, runtime, progress, spare,
                               started)


def _checked_export(request: ExportRequest, repo: ModelRepository, staging: StagingDir,
                    verifier: VerifierProcess, runtime: Any, progress: Progress,
                    spare: contextlib.ExitStack, started: float
                    ) -> tuple[Manifest, dict[str, float]]:
    from shipyard.exporter import archive, source

    checker = verifier
    try:
        staged = _write_and_compare(request, repo, staging, verifier, checker, progress,
                                    optimized=True)
        suspect = (staged.differences[0] if staged.differences
                   and staged.model.loader == source.OPTIMIZED_LOAD else None)
    except _OptimizedLoadNonFinite as err:
        staged, suspect = None, str(err)
    if suspect is not None:
        # The optimized load can be wrong where Keras's own is right (a custom layer doing
        # what it did not foresee, such as reading a variable before the load filled it): it
        # never gets to publish that, nor to refuse the model. The model is loaded again,
        # Keras's own way, and exported again, and a fresh verifier checks that export (the
        # first one may have loaded the discarded one).
        log.warning("%s: shipyard's optimized load answers otherwise than Keras's own load "
                    "(%s); exporting it again from Keras's own load", request.model, suspect)
        del staged
        gc.collect()
        empty_directory(staging.path)
        checker.abandon()  # it may have loaded the discarded export
        checker = VerifierProcess(with_reference=False, start=verifier.start_child)
        spare.callback(checker.close)
        staged = _write_and_compare(request, repo, staging, verifier, checker, progress,
                                    optimized=False)
    if staged.differences:
        details = "\n".join(f"  - {d}" for d in staged.differences[:20])
        raise VerificationError(
            f"{request.model} answers otherwise each time it is loaded: the exporting "
            f"process's load ({staged.model.loader}) and {staged.independent['loader']} in a "
            f"separate process differ on the same inputs; nothing was published:\n{details}\n"
            "The model's outputs depend on more than its saved file (unseeded randomness at "
            "inference, state computed when a layer is built from something other than its "
            "weights): make them deterministic, or widen `tolerance` if the differences are "
            "numerical noise.")
    # The reference exits: a large model's copy is freed before its verifier loads the export.
    verifier.reference.finish()
    if staged.verify_later is not None:
        checker.start(staged.verify_later)
    model, built, references, warmed = (staged.model, staged.built, staged.references,
                                        staged.warmed)
    expected_path = staged.expected_path
    export_seconds = time.monotonic() - started

    # The version's files are final from here on (the manifest, written last, is not listed):
    # hash them and the checkpoint's tensors while the verifiers work, rather than after.
    # hashlib and TensorFlow's checkpoint reader release the GIL, and the parent only waits.
    # A failed verification sets `stop_hashing`, so that leaving this block does not wait
    # for hashes nobody will read (about 17 s of them at 4 GiB of weights).
    stop_hashing = threading.Event()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipyard-hash") as hashing, \
            _stopped_on_failure(stop_hashing):
        hashed_files = hashing.submit(list_files, staging.path, stop_hashing)
        variable_digests = hashing.submit(archive.checkpoint_digests, staging.path,
                                          archive.rng_state_digests(staged.rng_states),
                                          stop_hashing)
        verify_started = time.monotonic()
        with progress.step("verify in a fresh CPU-only process"):
            outcome = checker.finish(expected_path)
        if not outcome["ok"]:
            details = "\n".join(f"  - {f}" for f in outcome["failures"])
            log_tail = outcome.get("log", "")
            raise VerificationError(
                f"verification of the export of {request.model} failed; nothing was "
                f"published:\n{details}"
                + (f"\nverifier log (last lines):\n{log_tail}" if log_tail else ""))
        runtimes = _check_runtime(runtime, staging.path, warmed[:staged.warmup_records],
                                  expected_path, request.spec, progress)
        reusable = _check_reusable(request, model, staging.path, references, progress)
        verify_seconds = time.monotonic() - verify_started
        files = hashed_files.result()
        checkpoint = variable_digests.result()
        hash_wait_seconds = time.monotonic() - verify_started - verify_seconds

    spec = request.spec
    manifest = Manifest(
        name=request.name,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source={**model.describe(),
                **({"path": request.source_location} if request.source_location else {}),
                **({"shipped": built.describe()} if built.describe() else {})},
        spec=spec.normalized(),
        fingerprint=fingerprint(files, spec.normalized(), staged.signatures, checkpoint,
                                built.lookup_vocabularies,
                                archive.architecture_digest(model)),
        signatures=staged.signatures,
        default_endpoint=spec.default.name,
        variable_collections={name: len(v) for name, v in built.collections.items()},
        parity={
            e.name: {"max_abs_error": outcome["parity"].get(e.name, 0.0),
                     "batch_sizes": sorted({r.sample.batch_size for r in references
                                            if r.signature == e.name}),
                     **spec.tolerance.model_dump()}
            for e in (built.calls_spec or spec).endpoints
            if any(r.signature == e.name for r in references)
        },
        warmup_records=staged.warmup_records,
        verification={"devices": outcome["devices"], "load_seconds": outcome["load_seconds"],
                      "runtimes": runtimes,
                      # what the export was held to, and how the exporting process loaded
                      "reference": {"loader": staged.independent["loader"],
                                    "process": "separate, CPU only",
                                    "load_seconds": round(staged.independent["load_seconds"], 3)},
                      **({"reusable": reusable} if reusable else {}),
                      "export_loader": model.loader,
                      "version_loader": outcome.get("loader", "tf.saved_model.load")},
        producer={"shipyard": __version__, **source.library_versions()},
        files=files,
        extra={"signing": signing.signing_record(request.sign)} if request.sign else {},
    )
    write_manifest(staging.path, manifest)
    if request.sign is not None:
        # Verified, and not yet published: the signature covers the manifest too.
        with progress.step("sign the version"):
            signing.sign_version(staging.path, request.sign)
    return manifest, {"export_seconds": export_seconds, "verify_seconds": verify_seconds,
                      # how long the hashing outlasted the verification (0: fully hidden)
                      "hash_wait_seconds": hash_wait_seconds}


def _write_and_compare(request: ExportRequest, repo: ModelRepository, staging: StagingDir,
                       verifier: VerifierProcess, checker: VerifierProcess,
                       progress: Progress, *, optimized: bool) -> _Staged:
    """Loads the source (`optimized`: shipyard's way, else Keras's own), writes the export
    and its warmup into `staging`, starts `checker` (a verifier) on it, and compares the
    loaded model's answers with the independent reference's (`verifier.reference`)."""
    from shipyard.exporter import archive, reference, source, warmup

    how = "" if optimized else " with Keras's own load_model"
    with archive.placed_on(request.device):
        with progress.step(f"load {request.model}{how}"):
            source.import_modules(request.imports)
            model = source.load_source_model(request.model, unsafe=request.unsafe,
                                             optimized=optimized)
        with progress.step("build endpoints"):
            built = build(model, request.spec)
        with progress.step("write SavedModel"):
            built.write(staging.path)
        rng_states = archive.rng_states(model)  # before any call advances them
    signatures = archive.read_signatures(staging.path)
    check_compatibility(repo, request, signatures)  # fail fast; repeated under the publish lock
    real_examples = _real_examples(request)
    # The calls every check makes: the spec's endpoints, and for a whole SavedModel the
    # signatures of the source the spec does not name (each is called on both sides too).
    spec = built.calls_spec or request.spec
    with progress.step("compute reference outputs"):
        digests = reference.collection_digests(built)
        try:
            references = reference.compute_references(
                built, spec, real_examples, optional=frozenset(
                    e.name for e in spec.endpoints if e not in request.spec.endpoints),
                skipped=built.unverifiable)
        except reference.NonFiniteOutputs as err:
            if model.loader != source.OPTIMIZED_LOAD:
                raise
            raise _OptimizedLoadNonFinite(str(err).split(";")[0]) from None
        # Every call the verifier makes, serving_default included: it is a separate function
        # in the graph, so clients that omit signature_name would otherwise pay its first call.
        # Real examples only with warmup_from_examples: the version's files travel widely.
        warmed = [r for r in references if request.warmup_from_examples or not r.sample.real]
        warmup_records = warmup.write_warmup(
            staging.path / MANIFEST_DIR, request.name,
            [(r.signature, r.sample) for r in warmed], spec)
        with writing_verifier_inputs(verifier.workdir):  # in $TMPDIR, not the repository
            inputs_path = reference.write_inputs(references, verifier.workdir)
    expected_path = verifier.workdir / EXPECTED_NAME
    verify_job = {
        # Absolute: the verifier may have been started in another working directory.
        "saved_model_dir": str(staging.path.resolve()),
        "inputs": str(inputs_path),
        "plan": reference.plan(references, spec),
        "tolerance": spec.tolerance.model_dump(),
        "collections": digests,
        # A whole SavedModel is loaded as TF Serving loads it, so its init ops are proven.
        "loader": "session" if model.format == "saved_model" else "tf.saved_model.load",
    }
    # A small export is verified while the reference still imports, loads and computes (the
    # verifier compares once the reference's outputs exist: VerifierProcess.finish); a large
    # one only once the reference is done, since two loads of a large model at once slow each
    # other down, and hold it twice.
    early = tree_bytes(staging.path / "variables") <= EARLY_VERIFY_MAX_BYTES
    if early:
        checker.start(verify_job)
    with progress.step("compute the independent reference (the source loaded by its own "
                       "library, in a separate process)"):
        try:
            independent = verifier.reference.compute({
                "spec": spec.normalized(), "model": str(Path(request.model).resolve()),
                "inputs": str(inputs_path), "plan": reference.plan(references, spec),
                "seed_states": [state.tolist() for state in rng_states],
                "expected": str(expected_path)}, timeout=DEFAULT_TIMEOUT_S)
        except ReferenceFailed as err:
            raise VerificationError(
                f"the independent reference for {request.model} failed, so the export cannot "
                f"be verified; nothing was published: {err}") from None
    found = reference.differences(references, expected_path, spec.tolerance.atol,
                                  spec.tolerance.rtol)
    return _Staged(model, built, signatures, rng_states, references, warmed, warmup_records,
                   digests, inputs_path, expected_path, independent, found,
                   None if early else verify_job)


class _OptimizedLoadNonFinite(Exception):
    """NaN or Inf from the model as the optimized load left it: Keras's own load decides."""


def build(model: Any, spec: ExportSpec) -> Any:
    """A .keras model through Keras's ExportArchive; a SavedModel source whole (whole.py)."""
    if model.format == "saved_model":
        from shipyard.exporter.whole_archive import build_whole

        return build_whole(model, spec)
    from shipyard.exporter.archive import build_archive

    return build_archive(model, spec)


@contextlib.contextmanager
def _stopped_on_failure(stop: threading.Event) -> Iterator[None]:
    """Sets `stop` if the block raises (and lets the exception through)."""
    try:
        yield
    except BaseException:
        stop.set()
        raise


def _check_reusable(request: ExportRequest, model: Any, version_dir: Path,
                    references: list[Any], progress: Progress) -> dict[str, Any] | None:
    """With `reusable: true`, TF Hub's own client (hub.KerasLayer under tf_keras, in a process
    of its own) must fine-tune the version as the model: reusable_check.py."""
    if not request.spec.reusable:
        return None
    from shipyard.exporter.reusable import expectations
    from shipyard.exporter.reusable_check import check_reusable

    # The exporting process's model gives the expected answers: on these very inputs (the
    # serving_default call) it was compared with the independent reference before the write
    # was kept (_checked_export), so a fault of its load cannot vouch for itself here. (A
    # default endpoint with `training: true` was compared in training mode; its inference
    # answers rest on the same load, which every other call agreed with.)
    call = next(r for r in references if r.signature == "serving_default")
    with progress.step("verify the reusable interface with TF Hub's client (hub.KerasLayer)"):
        return check_reusable(version_dir, tolerance=request.spec.tolerance,
                              **expectations(model, request.spec, call.sample.arguments))


def _real_examples(request: ExportRequest) -> tuple[bytes, ...]:
    if request.examples is None:
        return ()
    from shipyard.core.errors import UsageError
    from shipyard.exporter.real_examples import read_examples

    if not any(e.examples_input() is not None for e in request.spec.endpoints):
        raise UsageError("examples: no endpoint of the spec takes serialized examples; "
                         "declare the examples input with `tf_example`, or leave --examples "
                         "out", param="examples")
    return read_examples(request.examples, request.examples_limit)


def _check_runtime(runtime: Any, saved_model_dir: Path, references: list[Any],
                   expected_path: Path, spec: ExportSpec, progress: Progress
                   ) -> dict[str, Any]:
    """The version on the serving image's TensorFlow: {runtime: record} for shipyard.json."""
    if not isinstance(runtime, RuntimeCheck):
        return {}  # turned off
    from shipyard.exporter.reference import plan as call_plan

    plan = call_plan(references, spec)  # the verifier's calls, in its order
    with progress.step(f"verify on TF Serving's runtime (TensorFlow {runtime.choice.version})"):
        outcome = runtime.run(saved_model_dir.resolve(), plan)
        if outcome.outputs is not None:
            outcome.record["parity"] = compare_runtime_outputs(
                outcome, expected_path, spec.tolerance.atol, spec.tolerance.rtol)
    return {outcome.version: outcome.record}


def check_compatibility(repo: ModelRepository, request: ExportRequest,
                        signatures: dict[str, Any]) -> None:
    """Refuses signatures that break clients of the latest version (unless allowed)."""
    latest = repo.latest_version(request.name)
    if latest is None or request.allow_breaking:
        return
    latest_location = repo.version_location(request.name, latest)
    try:
        latest_manifest = repo.read_manifest(request.name, latest)
        previous = latest_manifest.signatures if latest_manifest else None
        local_dir = repo.local_version_dir(request.name, latest)
        if previous is None and local_dir is not None:
            # A version written by another tool: its SavedModel still has signatures. (Read
            # with TensorFlow, imported only here: copy and register's re-runs need none.)
            from shipyard.exporter.archive import read_signatures

            previous = read_signatures(local_dir)
    except Exception as err:  # unreadable JSON or proto: say which version and what to do
        raise ShipyardError(
            f"cannot read the signatures of version {latest} ({latest_location}) to check "
            f"compatibility: {type(err).__name__}: {err}. Repair or remove that version, or "
            "pass --allow-breaking to skip the check.") from None
    problems = breaking_changes(previous, signatures)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise BreakingChangeError(
            f"the new export breaks clients of version {latest} ({latest_location}):\n{listed}\n"
            "Keep the signatures compatible, or pass --allow-breaking if clients are ready.")
