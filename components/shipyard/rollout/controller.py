"""Carries out the state machine's decisions through injected adapters; one rollout per model.

The adapters are small interfaces (below) so the whole loop runs in tests against fakes and in
production against Kubernetes (kube.cluster), TF Serving's metrics (rollout.observe) and the
MLflow registry (alias moves through the audited path).

Every change of state is saved before and after each action, in the cluster, so a controller
that is restarted (same `rollout start`) resumes where it stopped: it first finishes the
actions that were decided, then goes on checking.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, ContextManager, Protocol

from shipyard.errors import LeaseHeldError, UsageError
from shipyard.rollout import machine
from shipyard.rollout.gates import GateResult, Observation, evaluate
from shipyard.rollout.machine import RolloutState
from shipyard.rollout.policy import RolloutPolicy

log = logging.getLogger(__name__)


class Cluster(Protocol):
    def lease(self, name: str, holder: str, wait_s: float) -> ContextManager[None]: ...
    def load_state(self, name: str) -> dict[str, Any] | None: ...
    def save_state(self, name: str, state: dict[str, Any]) -> None: ...
    def stable_version(self, name: str) -> int | None: ...
    def deploy_canary(self, name: str, version: int) -> None: ...
    def set_weight(self, name: str, weight: int) -> None: ...
    def promote_stable(self, name: str, version: int) -> None: ...
    def remove_canary(self, name: str) -> None: ...


class Observer(Protocol):
    def observe(self, name: str, state: RolloutState) -> Observation: ...


class Aliases(Protocol):
    def set_canary(self, name: str, version: int, reason: str) -> None: ...
    def clear_canary(self, name: str, reason: str, gates: dict[str, Any]) -> None: ...
    def move_champion(self, name: str, version: int, reason: str,
                      gates: dict[str, Any]) -> None: ...


class Ports:
    def __init__(self, cluster: Cluster, observer: Observer, aliases: Aliases, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.cluster, self.observer, self.aliases = cluster, observer, aliases
        self.clock, self.sleep = clock, sleep


def current(ports: Ports, name: str) -> RolloutState | None:
    data = ports.cluster.load_state(name)
    return RolloutState.from_json(data) if data else None


def start(ports: Ports, name: str, version: int, policy: RolloutPolicy, *, holder: str,
          lease_wait_s: float = 0.0,
          on_change: Callable[[RolloutState], None] | None = None) -> RolloutState:
    """Runs the rollout of `version` to its end (promoted, rolled back or aborted), holding
    the model's Lease throughout. Resumes a stored rollout of the same version."""
    with ports.cluster.lease(name, holder, lease_wait_s):
        state = current(ports, name)
        unfinished = state is not None and (not state.terminal or bool(state.pending))
        if unfinished and state.version != version:
            raise UsageError(
                f"--version {version}: a rollout of {name} version {state.version} is in "
                f"progress (phase {state.phase}, step {state.step + 1}); finish it with "
                f"`shipyard rollout promote --name {name}` or `shipyard rollout abort --name "
                f"{name} --reason ...` first")
        if not unfinished:
            stable = ports.cluster.stable_version(name)
            if stable == version:
                raise UsageError(f"--version {version}: {name} version {version} already "
                                 "serves as stable; nothing to roll out")
            state = machine.begin(name, version, stable, policy, ports.clock())
            _save(ports, state, on_change)
        else:
            log.info("resuming the rollout of %s version %s at step %s", name, version,
                     state.step + 1)
        return _run(ports, state, policy, on_change)


def request(ports: Ports, name: str, what: str, reason: str | None, *, holder: str,
            policy: RolloutPolicy | None = None) -> RolloutState:
    """`rollout promote|abort`: recorded in the stored state, where a running controller
    picks it up at its next check. If no controller holds the Lease, it is carried out here."""
    state = current(ports, name)
    if state is None or state.terminal:
        raise UsageError(f"--name {name}: no rollout of {name} is in progress"
                         + (f" (the last one ended {state.phase}: {state.reason})"
                            if state else ""))
    state = machine.request(state, what, reason)
    ports.cluster.save_state(name, state.to_json())
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ports.cluster.lease(name, holder, 0.0))
        except LeaseHeldError:
            log.info("a running controller holds the rollout of %s; it will %s at its next "
                     "check", name, what)
            return state
        state = current(ports, name) or state  # as the last holder left it
        state = _drain(ports, state, None)  # what it had decided comes first
        return _drain(ports, machine.decide(state, policy or _ANY_POLICY, None, ports.clock()),
                      None)


def _run(ports: Ports, state: RolloutState, policy: RolloutPolicy,
         on_change: Callable[[RolloutState], None] | None) -> RolloutState:
    while True:
        state = _drain(ports, state, on_change)
        if state.terminal:
            return state
        ports.sleep(policy.check_interval_seconds)
        state = _with_stored_request(ports, state)
        result: GateResult | None = None
        if not state.requested:
            result = evaluate(policy.gates, ports.observer.observe(state.name, state))
            # A request that arrived while measuring wins over the measurement.
            state = _with_stored_request(ports, state)
        decided = machine.decide(state, policy, result, ports.clock())
        if decided != state:
            decided = _save(ports, decided, on_change)
        state = decided


def _drain(ports: Ports, state: RolloutState,
           on_change: Callable[[RolloutState], None] | None) -> RolloutState:
    """Carries out the pending actions in order, saving after each (a restart redoes at most
    the one that was under way; every action is idempotent)."""
    state = _save(ports, state, on_change)
    while state.pending:
        _carry_out(ports, state, state.pending[0])
        state = _save(ports, machine.done(state), on_change)
    return state


def _carry_out(ports: Ports, state: RolloutState, action: machine.Action) -> None:
    name = state.name
    log.info("%s: %s", name, action)
    if action.kind == "set_canary_alias":
        ports.aliases.set_canary(name, action.version, action.reason or "")
    elif action.kind == "deploy_canary":
        ports.cluster.deploy_canary(name, action.version)
    elif action.kind == "set_weight":
        ports.cluster.set_weight(name, action.weight)
    elif action.kind == "promote_stable":
        ports.cluster.promote_stable(name, action.version)
    elif action.kind == "remove_canary":
        ports.cluster.remove_canary(name)
    elif action.kind == "move_champion":
        ports.aliases.move_champion(name, action.version, action.reason or "", action.gates)
    elif action.kind == "clear_canary_alias":
        ports.aliases.clear_canary(name, action.reason or "", action.gates)
    else:
        raise ValueError(f"unknown rollout action {action.kind!r}")


def _with_stored_request(ports: Ports, state: RolloutState) -> RolloutState:
    """`state` plus a promote/abort request another process stored meanwhile."""
    stored = current(ports, state.name)
    if (stored is not None and stored.requested and not state.requested
            and stored.version == state.version):
        return machine.request(state, stored.requested, stored.request_reason)
    return state


def _save(ports: Ports, state: RolloutState,
          on_change: Callable[[RolloutState], None] | None) -> RolloutState:
    """Stores `state` without losing a request stored since it was read; returns what was
    stored."""
    state = _with_stored_request(ports, state)
    ports.cluster.save_state(state.name, state.to_json())
    if on_change is not None:
        on_change(state)
    return state


# promote/abort decisions do not look at gates or steps.
_ANY_POLICY = RolloutPolicy(steps=[{"weight": 100}])
