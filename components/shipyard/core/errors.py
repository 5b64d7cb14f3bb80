"""shipyard's error hierarchy. Each error carries the exit code the CLI returns for it.

Messages follow one rule: say what was expected, what was received (naming the field or file),
and how to fix it.
"""

from __future__ import annotations


class ShipyardError(Exception):
    """Base class; exit code 1 ("anything else")."""

    exit_code = 1


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

    def __init__(self, message: str, document: dict | None = None):
        super().__init__(message)
        self.document = document


class LeaseHeldError(ShipyardError):
    """Another rollout of the same model holds its Lease (exit 9)."""

    exit_code = 9


class StorageError(ShipyardError):
    """A write of shipyard's failed for lack of space, a read-only file system or missing
    permission (exit 1). The message names the operation, the path, the bytes needed against
    the bytes free, and the fix; nothing partial is left behind."""

    exit_code = 1
