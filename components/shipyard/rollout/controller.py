"""Carries out the state machine's decisions through injected adapters; one rollout per model.

The adapters are small interfaces (below) so the whole loop runs in tests against fakes and in
production against Kubernetes (kube.cluster), TF Serving's metrics (rollout.observe) and the
MLflow registry (alias moves through the audited path).

The state is saved after every action, in the cluster, so a controller that is restarted (the
same `rollout start`) resumes where it stopped: it first finishes the actions that were
decided, then goes on checking. `rollout promote|abort|approve` never write that state: they
store a request under its own key, which only they write, so no request is lost to a
controller saving its state at the same moment.

Each saved state that says something happened (rollout/events.py) is told to `notify`, after
it is stored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, ContextManager, Protocol

from shipyard.core.errors import LeaseHeldError, ShipyardError, UsageError
from shipyard.rollout import machine
from shipyard.rollout.events import events
from shipyard.rollout.gates import GateResult, Observation, evaluate
from shipyard.rollout.machine import RolloutState
from shipyard.rollout.policy import RolloutPolicy

log = logging.getLogger(__name__)


class Lease(Protocol):
    def check(self) -> None:
        """Raises LeaseHeldError once the Lease is lost (another controller may act)."""


class Cluster(Protocol):
    def lease(self, name: str, holder: str, wait_s: float) -> ContextManager[Lease]: ...
    def load_state(self, name: str) -> dict[str, Any] | None: ...
    def save_state(self, name: str, state: dict[str, Any]) -> None: ...
    def load_request(self, name: str) -> dict[str, Any] | None: ...
    def save_request(self, name: str, request: dict[str, Any]) -> None: ...
    def stable_version(self, name: str) -> int | None: ...
    def deploy_canary(self, name: str, version: int) -> None: ...
    def set_weight(self, name: str, weight: int) -> None: ...
    def set_mirror(self, name: str, percent: int) -> None:
        """Copy `percent` of the stable track's requests to the canary (0: stop)."""
    def promote_stable(self, name: str, version: int) -> None: ...
    def remove_canary(self, name: str) -> None: ...


class Observer(Protocol):
    def observe(self, name: str, state: RolloutState) -> Observation: ...


class Aliases(Protocol):
    def champion(self, name: str) -> int | None: ...
    def set_canary(self, name: str, version: int, reason: str) -> None: ...
    def clear_canary(self, name: str, reason: str, gates: dict[str, Any]) -> None: ...
    def move_champion(self, name: str, version: int, reason: str,
                      gates: dict[str, Any]) -> None: ...


Notify = Callable[[str, dict[str, Any]], None]  # (event type, data); never raises


class Ports:
    def __init__(self, cluster: Cluster, observer: Observer, aliases: Aliases, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, notify: Notify | None = None):
        self.cluster, self.observer, self.aliases = cluster, observer, aliases
        self.clock, self.sleep = clock, sleep
        self.notify = notify
        self.saved: dict[str, RolloutState] = {}  # the last state saved, per model


def current(ports: Ports, name: str) -> RolloutState | None:
    data = ports.cluster.load_state(name)
    return RolloutState.from_json(data) if data else None


def start(ports: Ports, name: str, version: int, policy: RolloutPolicy, *, holder: str,
          lease_wait_s: float = 0.0,
          on_change: Callable[[RolloutState], None] | None = None) -> RolloutState:
    """Runs the rollout of `version` to its end (promoted, rolled back or aborted), holding
    the model's Lease throughout. Resumes a stored rollout of the same version."""
    with ports.cluster.lease(name, holder, lease_wait_s) as lease:
        state = current(ports, name)
        if state is not None:
            ports.saved[name] = state  # its events were told when it was saved
        unfinished = state is not None and not state.terminal
        if unfinished and state.version != version:
            raise UsageError(
                f"version {version}: a rollout of {name} version {state.version} is in "
                f"progress (phase {state.phase}, step {state.step + 1}); finish it with "
                f"`shipyard rollout promote --name {name}` or `shipyard rollout abort --name "
                f"{name} --reason ...` first", param="version")
        if not unfinished:
            state = machine.begin(name, version, _stable_version(ports, name, version), policy,
                                  ports.clock())
            _save(ports, state, on_change)
        else:
            log.info("resuming the rollout of %s version %s at step %s", name, version,
                     state.step + 1)
        return _run(ports, lease, state, policy, on_change)


def approve(ports: Ports, name: str, reason: str, *, by: str) -> RolloutState:
    """`rollout approve`: stored as a request for the approval step the rollout waits at,
    which the controller acts on at its next check (or the same `rollout start`, run again,
    if no controller runs). It never drives the rollout itself: only the controller holds
    the policy's remaining steps."""
    state = current(ports, name)
    if state is None or state.terminal:
        raise UsageError(f"name {name}: no rollout of {name} is in progress"
                         + (f" (the last one ended {state.phase}: {state.reason})"
                            if state else ""), param="name")
    if state.phase != machine.AWAITING_APPROVAL:
        raise UsageError(f"name {name}: the rollout of version {state.version} is not waiting "
                         f"for an approval (phase {state.phase}, step {state.step + 1}); "
                         "approve once `rollout status` says awaiting_approval", param="name")
    stored = ports.cluster.load_request(name)
    if (stored and stored.get("rollout_id") == state.rollout_id
            and stored.get("what") in (machine.ABORT, machine.PROMOTE)):
        # One request key per model: an approval stored now would overwrite it, and an
        # abort must never be lost to a later approval.
        raise UsageError(f"name {name}: the {stored['what']} request of this rollout is pending "
                         f"({stored.get('reason') or 'no reason'}); the controller acts on it "
                         "at its next check, so there is nothing to approve", param="name")
    ports.cluster.save_request(name, {"rollout_id": state.rollout_id, "what": machine.APPROVE,
                                      "reason": reason, "by": by, "step": state.step})
    return machine.request(state, machine.APPROVE, reason, by)


def _stable_version(ports: Ports, name: str, version: int) -> int | None:
    stable = ports.cluster.stable_version(name)
    if stable == version:
        raise UsageError(f"version {version}: {name} version {version} already serves as "
                         "stable; nothing to roll out", param="version")
    if stable is None:
        champion = ports.aliases.champion(name)
        if champion is not None and champion != version:
            # An empty namespace is a first deployment only if nothing is champion yet:
            # otherwise it is a typo in --namespace or a rebuilt cluster, and an ungated
            # champion move would be wrong.
            raise UsageError(
                f"version {version}: nothing serves {name} in this namespace, but version "
                f"{champion} is its champion. Check --namespace; on a new cluster, roll out "
                f"the champion first (--version {champion}), then {version} behind a canary",
                param="version")
    return stable


def request(ports: Ports, name: str, what: str, reason: str | None, *, holder: str,
            lease_wait_s: float = 0.0, policy: RolloutPolicy | None = None,
            by: str | None = None) -> RolloutState:
    """`rollout promote|abort`: stored as a request, which a running controller acts on at its
    next check. The command then waits up to `lease_wait_s` for the Lease: once no controller
    holds it (the running one finished, or a dead one's Lease expired), it carries out what is
    left itself and returns the final state."""
    state = current(ports, name)
    if state is None or state.terminal:
        raise UsageError(f"name {name}: no rollout of {name} is in progress"
                         + (f" (the last one ended {state.phase}: {state.reason})"
                            if state else ""), param="name")
    ports.cluster.save_request(name, {"rollout_id": state.rollout_id, "what": what,
                                      "reason": reason, "by": by})
    with contextlib.ExitStack() as stack:
        try:
            lease = stack.enter_context(ports.cluster.lease(name, holder, lease_wait_s))
        except LeaseHeldError as err:
            log.warning("%s; the request is recorded and the controller acts on it at its "
                        "next check", err)
            return machine.request(state, what, reason, by)
        state = current(ports, name) or state
        ports.saved[name] = state
        state = _with_stored_request(ports, state)
        if state.terminal:
            return state  # the running controller finished (with our request, or before it)
        policy = policy or _ANY_POLICY
        # An abort preempts what is pending; a promote comes after it.
        state = _drain(ports, lease, machine.decide(state, policy, None, ports.clock()), None,
                       policy)
        return _drain(ports, lease, machine.decide(state, policy, None, ports.clock()), None,
                      policy)


def _run(ports: Ports, lease: Lease, state: RolloutState, policy: RolloutPolicy,
         on_change: Callable[[RolloutState], None] | None) -> RolloutState:
    while True:
        state = _drain(ports, lease, _decide_request(ports, state, policy), on_change, policy)
        if state.terminal:
            return state
        ports.sleep(policy.check_interval_seconds)
        try:
            decided = _check(ports, state, policy)
        except LeaseHeldError:
            raise
        except ShipyardError as err:  # the cluster's API failed while checking
            decided = machine.failed(state, machine.Action("check"), str(err))
            if decided is None:
                raise
            log.error("%s: the check failed (%s); rolling back", state.name, err)
        if decided != state:
            _save(ports, decided, on_change)
        state = decided


def _check(ports: Ports, state: RolloutState, policy: RolloutPolicy) -> RolloutState:
    """One check; an error of the cluster's API here is the check's failure (the caller
    rolls back)."""
    state = _with_stored_request(ports, state, tolerant=False)
    result: GateResult | None = None
    if not state.requested:
        result = evaluate(policy.gates, ports.observer.observe(state.name, state))
    return machine.decide(_with_stored_request(ports, state, tolerant=False), policy, result,
                          ports.clock())


def _decide_request(ports: Ports, state: RolloutState, policy: RolloutPolicy) -> RolloutState:
    """An abort stored while actions were pending preempts them."""
    state = _with_stored_request(ports, state)
    return machine.decide(state, policy, None, ports.clock()) if state.requested else state


def _drain(ports: Ports, lease: Lease, state: RolloutState,
           on_change: Callable[[RolloutState], None] | None,
           policy: RolloutPolicy) -> RolloutState:
    """Carries out the pending actions in order, saving after each (a restart redoes at most
    the one that was under way; every action is idempotent). A failing forward action rolls
    the rollout back; an abort stored meanwhile preempts the rest. A failing rollback action
    stops the drain with what is left stored, for the same command to finish."""
    _save(ports, state, on_change)
    while state.pending:
        lease.check()  # never act on a model whose Lease another controller may hold now
        action = state.pending[0]
        try:
            _carry_out(ports, state, action)
        except LeaseHeldError:
            raise  # not this controller's to act on any more, not even to roll back
        except ShipyardError as err:
            rolled_back = machine.failed(state, action, str(err))
            if rolled_back is None:
                raise ShipyardError(
                    f"{state.name}: {machine.describe(action)} failed while the rollout was "
                    f"ending {state.phase} ({err}). Left to do: "
                    + "; ".join(machine.describe(a) for a in state.pending)
                    + f". They are stored with the rollout: run `shipyard rollout abort "
                    f"--name {state.name}` (or the same `rollout start`) again to finish "
                    "them") from err
            log.error("%s: %s failed (%s); rolling back", state.name, action.kind, err)
            state = rolled_back
        else:
            state = machine.done(state, ports.clock())
        if state.requested is None:
            state = _decide_request(ports, state, policy)
        _save(ports, state, on_change)
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
    elif action.kind == "set_mirror":
        ports.cluster.set_mirror(name, action.percent or 0)
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


def _with_stored_request(ports: Ports, state: RolloutState, *,
                         tolerant: bool = True) -> RolloutState:
    """`state` plus the promote/abort request stored for this rollout, if any. `tolerant`:
    a request that cannot be read now is read at the next check (a rollback under way is
    not stopped for it)."""
    try:
        stored = ports.cluster.load_request(state.name)
    except LeaseHeldError:
        raise
    except ShipyardError as err:
        if not tolerant:
            raise
        log.warning("%s: could not read the promote/abort requests (%s); reading them again "
                    "at the next check", state.name, err)
        return state
    if not stored or state.requested or stored.get("rollout_id") != state.rollout_id:
        return state
    if stored["what"] == machine.APPROVE and not (
            state.phase == machine.AWAITING_APPROVAL and stored.get("step") == state.step):
        return state  # an approval of an earlier step, already given
    return machine.request(state, stored["what"], stored.get("reason"), stored.get("by"))


def _save(ports: Ports, state: RolloutState,
          on_change: Callable[[RolloutState], None] | None) -> None:
    try:
        ports.cluster.save_state(state.name, state.to_json())
    except LeaseHeldError:
        raise
    except ShipyardError as err:
        raise type(err)(
            f"{err}. This state was not saved (phase {state.phase}, pending: "
            + ("; ".join(machine.describe(a) for a in state.pending) or "nothing")
            + "); the cluster keeps the last one saved before it, if any: run the same "
            "command again to resume from there") from err
    before, ports.saved[state.name] = ports.saved.get(state.name), state
    if ports.notify is not None:
        for event_type, data in events(before, state):
            ports.notify(event_type, data)
    if on_change is not None:
        on_change(state)


# promote/abort decisions do not look at gates or steps.
_ANY_POLICY = RolloutPolicy(steps=[{"weight": 100}])
