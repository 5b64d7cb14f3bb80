"""`shipyard push`: point a TF Serving label at a published version, one push per model at a time.

Composes the repository (published? checksums?), the pure label-move plan, the model config
file and, when a server address is given, TF Serving's reload-and-wait. Either every step lands
or NAME's entry goes back to what it was, in the file and on the server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import ServingError, UsageError
from shipyard.names import validate_model_name, validate_version
from shipyard.progress import NullProgress, Progress
from shipyard.repository import ModelRepository
from shipyard.serving.config import LABELS, ModelServing
from shipyard.serving.config_file import current_serving, write_entry
from shipyard.serving.plan import label_move_steps

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 300.0
RESTORE_TIMEOUT_S = 60.0


@dataclass
class PushResult:
    name: str
    version: int
    label: str
    before: ModelServing | None
    after: ModelServing
    steps: int
    config: str
    serving_address: str | None
    server_states: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "label": self.label,
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json(), "steps": self.steps, "config": self.config,
                "serving_address": self.serving_address,
                "server": {str(v): s for v, s in sorted(self.server_states.items())}}


def check_published(repo: ModelRepository, name: str, version: int) -> None:
    """A version may be served only if shipyard published it and every file is intact."""
    manifest = repo.read_manifest(name, version)
    if manifest is None:
        where = repo.version_location(name, version)
        known = ", ".join(map(str, repo.versions(name))) or "none"
        raise UsageError(f"--version {version}: {where} is not a published version of {name} "
                         f"(no shipyard.json); published versions: {known}")
    problems = repo.checksum_problems(name, version, manifest)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise UsageError(
            f"--version {version}: {repo.version_location(name, version)} fails its checksums "
            f"and will not be served:\n{listed}\nRe-export the model to publish a new version.")


def push_version(repo: ModelRepository, name: str, version: int, label: str, *,
                 serving_address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 progress: Progress = NullProgress()) -> PushResult:
    validate_model_name(name)
    validate_version(version)
    if label not in LABELS:
        raise UsageError(f"--label: expected one of {', '.join(LABELS)}, got {label!r}")
    with contextlib.ExitStack() as stack:
        client = None
        if serving_address is not None:
            from shipyard.serving.client import ServingClient

            client = stack.enter_context(ServingClient(serving_address))
        with progress.step(f"wait for other pushes of {name}"):
            stack.enter_context(repo.serving_lock(name))
        with progress.step(f"check {name} version {version}"):
            check_published(repo, name, version)
        if client is not None:
            with progress.step(f"reach TF Serving at {serving_address}"):
                client.version_states(name)  # unreachable: fail before touching the file
        before = current_serving(repo, name)
        steps = label_move_steps(before, label, version)
        written = False
        try:
            for number, state in enumerate(steps, 1):
                with progress.step(f"step {number}/{len(steps)}: "
                                   f"versions {list(state.versions)}, labels {state.labels}"):
                    config = write_entry(repo, name, state)
                    written = True
                    if client is not None:
                        started = time.monotonic()
                        client.reload(config, timeout_s)
                        client.wait_available(name, state.versions,
                                              max(timeout_s - (time.monotonic() - started), 0))
        except BaseException as err:  # Ctrl-C included: never leave a half-moved label
            if written:
                _restore(repo, name, before, client, timeout_s)
            if isinstance(err, ServingError):
                raise ServingError(f"{err}\nThe previous config of {name} was restored "
                                   f"({repo.config_location}).") from None
            raise
        states = ({v: s["state"] for v, s in client.version_states(name).items()}
                  if client is not None else {})
        after = current_serving(repo, name) or ModelServing()
    return PushResult(name, version, label, before, after, len(steps), repo.config_location,
                      serving_address, states)


def _restore(repo: ModelRepository, name: str, before: ModelServing | None,
             client: Any, timeout_s: float) -> None:
    config = write_entry(repo, name, before)
    if client is None:
        return
    try:
        # The server applies reloads in order: this one may wait for the failed one.
        client.reload(config, max(timeout_s, RESTORE_TIMEOUT_S))
    except ServingError as err:  # the file is right again; the server reads it on its next poll
        log.error("could not send the restored config to %s: %s", client.address, err)
