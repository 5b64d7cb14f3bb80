"""`shipyard push`: point a TF Serving label at a published version, one push per model at a time.

Composes the repository (published? checksums?), the pure label-move plan, the model config
file and, when a server address is given, TF Serving's reload-and-wait. If a step fails, NAME's
entry in the file goes back to what it was and the restored config is sent to the server; the
error says whether the server took it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from shipyard.core.errors import ServingError, UsageError
from shipyard.core.names import validate_model_name, validate_version
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.vocabulary import LABELS
from shipyard.serving.config import ModelServing
from shipyard.serving.config_file import current_serving, write_entry
from shipyard.serving.plan import label_move_steps, label_removal_steps
from shipyard.signing.keys import TrustKey
from shipyard.steps.verify import require_trusted

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 300.0
RESTORE_TIMEOUT_S = 60.0


@dataclass
class PushResult:
    name: str
    version: int | None  # None: the label was dropped
    label: str
    before: ModelServing | None
    after: ModelServing
    steps: int
    complete: bool
    config: str
    serving_address: str | None
    server_states: dict[int, str] = field(default_factory=dict)  # after the last step
    unloading: list[int] = field(default_factory=list)  # dropped, still served at the timeout

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "label": self.label,
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json(), "steps": self.steps,
                "complete": self.complete, "config": self.config,
                "serving_address": self.serving_address,
                "server": {str(v): s for v, s in sorted(self.server_states.items())},
                "unloading": self.unloading}


def check_published(repo: ModelRepository, name: str, version: int,
                    param: str = "version", trust: TrustKey | None = None) -> None:
    """A version may be served only if shipyard published it and every file is intact; with a
    trust key, only if its signature verifies with it too (VerificationError, exit 4, checked
    before the checksums: it covers every file, the manifest included). `param`: the
    parameter `version` came from, which the errors name."""
    links = repo.symlinked_versions(name)
    if version in links:
        raise UsageError(
            f"{param} {version}: {repo.version_location(name, version)} is a symlink to "
            f"{links[version]}; shipyard serves only version directories it published and "
            f"never follows links. Publish the model as a version instead; verified versions: "
            f"{_listed(verified_versions(repo, name))}", param=param)
    manifest = repo.read_manifest(name, version)
    if manifest is None:
        where = repo.version_location(name, version)
        raise UsageError(f"{param} {version}: {where} is not a published version of {name} "
                         f"(no shipyard.json); verified published versions: "
                         f"{_listed(verified_versions(repo, name))}", param=param)
    require_trusted(repo, name, version, trust, manifest)
    problems = repo.checksum_problems(name, version, manifest)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise UsageError(
            f"{param} {version}: {repo.version_location(name, version)} fails its checksums "
            f"and will not be served:\n{listed}\nRe-export the model to publish a new version.",
            param=param)


def verified_versions(repo: ModelRepository, name: str) -> list[int]:
    """Versions that could be pushed: with shipyard.json and every file matching it. Read only
    on the error path (it hashes every file of every version)."""
    verified = []
    for version in repo.versions(name):
        try:
            manifest = repo.read_manifest(name, version)
            if manifest is not None and not repo.checksum_problems(name, version, manifest):
                verified.append(version)
        except (OSError, ValueError, KeyError, TypeError):  # unreadable or malformed
            continue
    return verified


def _listed(versions: list[int]) -> str:
    return ", ".join(map(str, versions)) or "none"


def push_version(repo: ModelRepository, name: str, version: int, label: str, *,
                 serving_address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 progress: Progress = NullProgress(),
                 trust: TrustKey | None = None) -> PushResult:
    """Moves `label` to `version` in the steps `label_move_steps` plans.

    With a server, each step is sent and waited for, all within `timeout_s`. Without one, the
    steps stop after one that loads a new version: a server polling the file refuses a label on
    a version it has not loaded yet, and would then never load it. The result says
    `complete: false`; the same push run again once the version is loaded finishes the move.

    With `trust`, version N's signature must verify with it (model-signing's verifier), under
    the serving lock and before models.config is touched: else VerificationError (exit 4).
    """
    validate_model_name(name)
    validate_version(version)
    _check_label(label)
    return _apply(repo, name, label, version,
                  lambda before: label_move_steps(before, label, version),
                  serving_address=serving_address, timeout_s=timeout_s, progress=progress,
                  trust=trust)


def drop_label(repo: ModelRepository, name: str, label: str, *,
               serving_address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               progress: Progress = NullProgress()) -> PushResult:
    """Removes `label` (e.g. canary after an offline canary) and unloads the versions no
    label needs any more, with the same locking, waiting and restore as a push."""
    validate_model_name(name)
    _check_label(label)
    return _apply(repo, name, label, None, lambda before: label_removal_steps(before, label),
                  serving_address=serving_address, timeout_s=timeout_s, progress=progress,
                  trust=None)


def _check_label(label: str) -> None:
    if label not in LABELS:
        raise UsageError(f"label: expected one of {', '.join(LABELS)}, got {label!r}",
                         param="label")


def _apply(repo: ModelRepository, name: str, label: str, version: int | None,
           plan: Callable[[ModelServing | None], list[ModelServing]], *,
           serving_address: str | None, timeout_s: float, progress: Progress,
           trust: TrustKey | None) -> PushResult:
    """Writes (and with a server, sends and waits for) the steps `plan` lays out from NAME's
    current entry, under the model's serving lock; restores the entry if a step fails."""
    if timeout_s <= 0:
        raise UsageError(f"timeout: expected a positive number of seconds, got {timeout_s:g}",
                         param="timeout")
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        client = None
        if serving_address is not None:
            from shipyard.serving.client import ServingClient

            client = stack.enter_context(ServingClient(serving_address))
        with progress.step(f"wait for other pushes of {name}"):
            stack.enter_context(repo.serving_lock(name))
        if version is not None:
            with progress.step(f"check {name} version {version}"
                               + (" and its signature" if trust is not None else "")):
                check_published(repo, name, version, trust=trust)
        if client is not None:
            with progress.step(f"reach TF Serving at {serving_address}"):
                client.version_states(name)  # unreachable: fail before touching the file
        before = current_serving(repo, name)
        steps = plan(before)
        if client is None:
            steps = _until_first_load(before, steps)
        written = False

        def send(config: Any) -> None:
            nonlocal written
            written = True  # the file has changed: from here on, failure means restore
            if client is not None:
                client.reload(config, _left(deadline), budget_s=timeout_s)

        try:
            for number, state in enumerate(steps, 1):
                with progress.step(f"step {number}/{len(steps)}: "
                                   f"versions {list(state.versions)}, labels {state.labels}"):
                    seen = client.version_states(name) if client is not None else {}
                    # Sent under the config lock, so the server gets configs in file order.
                    write_entry(repo, name, state, then=send)
                    if client is not None:
                        client.wait_available(name, state.versions, _left(deadline),
                                              seen=seen, budget_s=timeout_s)
        except BaseException as err:  # Ctrl-C included: never leave a half-moved label
            if not written:
                raise
            restored = _restore(repo, name, before, client, timeout_s)
            if isinstance(err, ServingError):
                raise ServingError(f"{err}\n{restored}") from None
            raise
        states, unloading = (_server_after(client, name, before, steps, deadline, timeout_s)
                             if client is not None else ({}, []))
        after = current_serving(repo, name) or ModelServing()
    complete = after.labels.get(label) == version
    return PushResult(name, version, label, before, after, len(steps), complete,
                      repo.config_location, serving_address, states, unloading)


def _server_after(client: Any, name: str, before: ModelServing | None,
                  steps: list[ModelServing], deadline: float,
                  timeout_s: float) -> tuple[dict[int, str], list[int]]:
    """NAME's version states once the server has done what the last step asked.

    `server` in the result should describe what the server does now, and TF Serving answers
    a reload before it unloads the versions that reload dropped. So this waits, within what
    is left of the push's timeout, until those versions are END. If the time runs out first,
    the push still succeeds (the label moved and the server finishes unloading on its own):
    the states are reported as read, the versions still served are listed in `unloading`,
    and a warning says so. Outside the restore's `try`: nothing here may roll the move back.
    """
    dropped: set[int] = set()
    if steps:  # no step, nothing sent: nothing of this push to wait for
        for state in [before or ModelServing(), *steps]:
            dropped |= set(state.versions)
        dropped -= set(steps[-1].versions)
    states, unloading = client.wait_unloaded(name, dropped, _left(deadline))
    if unloading:
        log.warning("%s: pushed, but TF Serving at %s still serves version(s) %s of %s: its "
                    "unload had not finished when the %g s timeout ran out. The server "
                    "finishes it on its own; check with shipyard status --serving-address.",
                    name, client.address, ", ".join(map(str, unloading)), name, timeout_s)
    return {v: s["state"] for v, s in states.items()}, unloading


def _until_first_load(before: ModelServing | None,
                      steps: list[ModelServing]) -> list[ModelServing]:
    loaded = set(before.versions) if before else set()
    for index, state in enumerate(steps):
        if set(state.versions) - loaded:
            return steps[:index + 1]
    return steps


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _restore(repo: ModelRepository, name: str, before: ModelServing | None,
             client: Any, timeout_s: float) -> str:
    """Puts NAME's entry back; returns a sentence saying where it was restored."""
    if client is None:
        write_entry(repo, name, before)
        return f"The previous config of {name} was restored in {repo.config_location}."
    try:
        # The server applies reloads in order: this one may wait for the failed one.
        write_entry(repo, name, before, then=lambda config: client.reload(
            config, max(timeout_s, RESTORE_TIMEOUT_S)))
    except ServingError as err:
        log.error("could not send the restored config to %s: %s", client.address, err)
        return (f"The previous config of {name} was restored in {repo.config_location}, but "
                f"TF Serving at {client.address} did not take it ({err}); it still has the "
                "failed config until it is reloaded or restarted.")
    return (f"The previous config of {name} was restored in {repo.config_location} and on "
            f"TF Serving at {client.address}.")
