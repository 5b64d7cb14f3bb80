"""shipyard's error hierarchy. Each error carries the exit code the CLI returns for it.

Messages follow one rule: say what was expected, what was received (naming the field or file),
and how to fix it.
"""

from __future__ import annotations


class ShipyardError(Exception):
    """Base class; exit code 1 ("anything else").

    param: the library parameter the error is about ("against", "keep"); the message then
    starts with it ("keep: expected 0 or more ..."), and `cli_message` shows the flag instead.
    document: a result document that still stands (the validation results of a failed gate);
    callers still print it."""

    exit_code = 1

    def __init__(self, message: str, *, param: str | None = None,
                 document: dict | None = None):
        super().__init__(message)
        self.param = param
        self.document = document


class UsageError(ShipyardError):
    """Bad spec, arguments or name (exit 2)."""

    exit_code = 2


class SpecError(UsageError):
    """The export spec is invalid, or does not fit the model it is applied to (exit 2)."""


class VersionExistsError(ShipyardError):
    """The requested version already exists and is never overwritten (exit 3)."""

    exit_code = 3


class VerificationError(ShipyardError):
    """The written SavedModel did not load or answer like the source model (exit 4)."""

    exit_code = 4


class BreakingChangeError(ShipyardError):
    """The new signatures break clients of the latest published version (exit 5)."""

    exit_code = 5


class ModelLoadError(ShipyardError):
    """The source model is missing, corrupt or cannot be loaded (exit 1)."""

    exit_code = 1


class RegistryUnavailableError(ShipyardError):
    """The MLflow tracking or registry server could not be reached (exit 6)."""

    exit_code = 6


class ServingError(ShipyardError):
    """TF Serving refused, failed or timed out; the previous config was restored (exit 7)."""

    exit_code = 7


class GateError(ShipyardError):
    """Validation results missed a threshold: parity or agreement (exit 8). Carries the
    result document, which is still printed."""

    exit_code = 8


class LeaseHeldError(ShipyardError):
    """Another rollout of the same model holds its Lease (exit 9)."""

    exit_code = 9


class DriftError(ShipyardError):
    """`shipyard reconcile` found the registry, the repository, models.config and the servers
    disagreeing, and (with --fix) not everything could be repaired (exit 10). Carries the
    reconcile document, which is still printed."""

    exit_code = 10


class ClusterError(ShipyardError):
    """The Kubernetes API refused a call, or could not be reached after bounded retries
    (exit 1). The message names the call, the API server's answer and the fix; a rollout
    under way is rolled back, or left in a state the same command resumes. `missing_kind`:
    the cluster does not serve the object's kind at all (a CRD not installed)."""

    exit_code = 1

    def __init__(self, message: str, *, missing_kind: bool = False):
        super().__init__(message)
        self.missing_kind = missing_kind


class StorageError(ShipyardError):
    """A write of shipyard's failed for lack of space, a read-only file system or missing
    permission (exit 1). The message names the operation, the path, the bytes needed against
    the bytes free, and the fix; nothing partial is left behind."""

    exit_code = 1


def cli_message(err: ShipyardError) -> str:
    """The message for the command line: a leading `param` ("against: ...", "examples PATH:
    ...") becomes its flag ("--against: ..."). TFX and KFP callers set parameters and never
    typed a flag; CLI users did."""
    message = str(err)
    param = err.param
    if param and message.startswith((f"{param}:", f"{param} ")):
        return f"--{param.replace('_', '-')}" + message[len(param):]
    return message
