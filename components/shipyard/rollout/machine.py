"""The canary rollout as a state machine. Pure: decisions only; the controller carries them out.

    begin        -> point alias canary at N, deploy the canary, enter the first step
    enter a step -> weight W: (remove the mirror,) set the canary's weight to W;
                    mirror P: copy P% of stable's traffic to the canary (its weight stays 0);
                    approval: phase awaiting_approval, until `rollout approve`
    each check   -> abort requested: roll back; promote requested: promote;
                    awaiting approval: approve requested: next step (the approval recorded);
                    timeout_seconds passed: abort; gates fail: roll back; else wait;
                    gates fail: roll back; no data: pause (or fail/pass, as the policy says;
                    fail after max_checks_without_data); gates pass for the step's pause:
                    next step, or promote after the last step
    promote      -> stable serves N, weight 0, canary removed, champion = N, alias canary cleared
    roll back    -> weight 0 first, canary removed, alias canary cleared; champion unchanged

State is plain data (JSON) so the controller can store it in the cluster and a restarted
controller can resume; actions not yet carried out are part of the state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shipyard.rollout.gates import FAIL, NO_DATA, GateResult
from shipyard.rollout.policy import MIRROR, WEIGHT, RolloutPolicy

PROGRESSING, PROMOTED, ROLLED_BACK, ABORTED = "progressing", "promoted", "rolled_back", "aborted"
AWAITING_APPROVAL = "awaiting_approval"
TERMINAL = (PROMOTED, ROLLED_BACK, ABORTED)
PROMOTE, ABORT, APPROVE = "promote", "abort", "approve"


@dataclass(frozen=True)
class Action:
    """One thing the controller does. kind: set_canary_alias | deploy_canary | set_weight |
    set_mirror | promote_stable | remove_canary | move_champion | clear_canary_alias."""

    kind: str
    version: int | None = None
    weight: int | None = None
    percent: int | None = None  # set_mirror: the share of stable's traffic copied; 0: none
    reason: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutState:
    name: str
    version: int
    stable_version: int | None
    phase: str = PROGRESSING
    step: int = 0
    weight: int = 0
    step_started_at: float = 0.0
    checks_without_data: int = 0
    requested: str | None = None  # PROMOTE | ABORT | APPROVE, from `rollout promote|...`
    request_reason: str | None = None
    request_by: str | None = None  # who asked (user@host)
    mirror: int = 0  # the share of stable's traffic copied to the canary now
    approval_requested_at: float | None = None  # when the current approval step began
    # Each approval given: {"step", "user", "reason", "time"}; recorded with the champion move.
    approvals: tuple[dict[str, Any], ...] = ()
    reason: str | None = None  # why it ended
    figures: dict[str, Any] = field(default_factory=dict)  # the last gate figures
    pending: tuple[Action, ...] = ()  # decided, not yet carried out
    settings: dict[str, Any] = field(default_factory=dict)  # the policy's serving section
    rollout_id: str = ""  # tells this rollout's promote/abort requests from older ones

    @property
    def ended(self) -> bool:
        """The outcome is decided (its actions may still be pending)."""
        return self.phase in TERMINAL

    @property
    def terminal(self) -> bool:
        """Decided and carried out: nothing left to do."""
        return self.ended and not self.pending

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pending"] = [a.to_json() for a in self.pending]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        fields = dict(data)
        fields["pending"] = tuple(Action(**a) for a in data.get("pending", []))
        fields["approvals"] = tuple(data.get("approvals", ()))
        return cls(**fields)


def begin(name: str, version: int, stable_version: int | None, policy: RolloutPolicy,
          now: float) -> RolloutState:
    settings = policy.serving.model_dump()
    rollout_id = f"{version}-{int(now * 1000)}"
    if stable_version is None:  # nothing serves yet: no canary to compare, deploy N directly
        return _promote(RolloutState(name=name, version=version, stable_version=None,
                                     step_started_at=now, settings=settings,
                                     rollout_id=rollout_id),
                        "first deployment: no stable version to compare with", {})
    return _enter_step(RolloutState(
        name=name, version=version, stable_version=stable_version,
        settings=settings, rollout_id=rollout_id,
        pending=(Action("set_canary_alias", version=version,
                        reason=f"rollout of version {version} started"),
                 Action("deploy_canary", version=version))), policy, 0, now)


def _enter_step(state: RolloutState, policy: RolloutPolicy, index: int,
                now: float) -> RolloutState:
    """Step `index` begins: its actions are appended to what is pending."""
    step = policy.steps[index]
    state = replace(state, step=index, step_started_at=now, phase=PROGRESSING)
    if step.kind == WEIGHT:
        # The mirror goes before the canary takes traffic: a request must not reach it twice.
        actions = (Action("set_mirror", percent=0),) if state.mirror else ()
        return replace(state, weight=step.weight, mirror=0, pending=state.pending + actions
                       + (Action("set_weight", weight=step.weight),))
    if step.kind == MIRROR:
        return replace(state, mirror=step.mirror, pending=state.pending
                       + (Action("set_mirror", percent=step.mirror),))
    return replace(state, phase=AWAITING_APPROVAL, approval_requested_at=now)


def request(state: RolloutState, what: str, reason: str | None = None,
            by: str | None = None) -> RolloutState:
    """Records `rollout promote|abort|approve`; the next decision acts on it."""
    if state.terminal:
        return state
    return replace(state, requested=what, request_reason=reason, request_by=by)


def decide(state: RolloutState, policy: RolloutPolicy, result: GateResult | None,
           now: float) -> RolloutState:
    """The next state (with its actions pending) after one check. `result` is None when the
    check measured nothing because a request (promote/abort) is handled first."""
    if state.requested == ABORT and _abortable(state):
        # Before anything pending: traffic must leave the canary at once, not after the
        # forward actions that were under way.
        return _roll_back(state, ABORTED, f"aborted: {state.request_reason or 'no reason'}",
                          state.figures)
    if state.ended or state.pending:
        return state  # finish what was decided before deciding again
    if state.requested == PROMOTE:
        return _promote(state, f"promoted by hand: {state.request_reason or 'no reason'}",
                        state.figures)
    if state.phase == AWAITING_APPROVAL:
        return _awaiting_approval(state, policy, result, now)
    if result is None:
        return state
    figures = dict(result.figures)
    if result.outcome == FAIL:
        return _roll_back(state, ROLLED_BACK, "gates failed: " + "; ".join(result.failures),
                          figures)
    if result.outcome == NO_DATA and policy.no_data != "pass":
        waited = state.checks_without_data + 1
        if policy.no_data == "fail" or waited >= policy.max_checks_without_data:
            return _roll_back(state, ROLLED_BACK,
                              f"no data for {', '.join(result.missing)} after {waited} "
                              "check(s)", figures)
        # Pause: the step's clock does not count time without data.
        return replace(state, checks_without_data=waited, figures=figures,
                       step_started_at=state.step_started_at + policy.check_interval_seconds)
    state = replace(state, checks_without_data=0, figures=figures)
    if now - state.step_started_at < policy.steps[state.step].pause_seconds:
        return state
    return _next_step(state, policy, now)


def _next_step(state: RolloutState, policy: RolloutPolicy, now: float) -> RolloutState:
    if state.step + 1 == len(policy.steps):
        return _promote(state, f"all {len(policy.steps)} step(s) passed their gates",
                        state.figures)
    return _enter_step(state, policy, state.step + 1, now)


def _awaiting_approval(state: RolloutState, policy: RolloutPolicy, result: GateResult | None,
                       now: float) -> RolloutState:
    """An approval step: approved, continue; timed out, abort. Meanwhile the canary keeps
    what it had (its weight or mirror) and its gates: a failure still rolls back. A check
    without data does not count against it: nobody may be sending traffic yet."""
    if state.requested == APPROVE:
        approval = {"step": state.step + 1, "user": state.request_by,
                    "reason": state.request_reason, "time": now}
        state = replace(state, approvals=state.approvals + (approval,), requested=None,
                        request_reason=None, request_by=None, approval_requested_at=None)
        return _next_step(replace(state, phase=PROGRESSING), policy, now)
    timeout = policy.steps[state.step].timeout_seconds
    started = state.approval_requested_at if state.approval_requested_at is not None else now
    if timeout is not None and now - started >= timeout:
        return _roll_back(state, ABORTED, f"aborted: nobody approved step {state.step + 1} "
                          f"within its timeout_seconds {timeout:g}", state.figures)
    if result is not None and result.outcome == FAIL:
        return _roll_back(state, ROLLED_BACK, "gates failed: " + "; ".join(result.failures),
                          dict(result.figures))
    return replace(state, figures=dict(result.figures)) if result is not None else state


def _promote(state: RolloutState, reason: str, figures: dict[str, Any]) -> RolloutState:
    # The champion move's audit record carries the gate figures and who approved what.
    audit = {**figures, "approvals": list(state.approvals)} if state.approvals else figures
    return replace(state, phase=PROMOTED, reason=reason, figures=figures, weight=0, mirror=0,
                   pending=(
        Action("promote_stable", version=state.version),
        Action("set_weight", weight=0),
        *_unmirror(state),
        Action("remove_canary"),
        Action("move_champion", version=state.version, reason=reason, gates=audit),
        Action("clear_canary_alias", reason=reason, gates=figures),
    ))


def _unmirror(state: RolloutState) -> tuple[Action, ...]:
    return (Action("set_mirror", percent=0),) if state.mirror else ()


def _roll_back(state: RolloutState, phase: str, reason: str,
               figures: dict[str, Any]) -> RolloutState:
    actions = [Action("set_weight", weight=0)]  # traffic leaves the canary before anything
    actions += _unmirror(state)  # and so do the copies
    if state.phase == PROMOTED and state.stable_version is not None:
        # A promotion under way may have half-moved the stable Deployment: put it back.
        actions.append(Action("promote_stable", version=state.stable_version))
    actions += [Action("remove_canary"),
                Action("clear_canary_alias", reason=reason, gates=figures)]
    return replace(state, phase=phase, reason=reason, figures=figures, weight=0, mirror=0,
                   pending=tuple(actions))


def _abortable(state: RolloutState) -> bool:
    """Until the champion has moved, an abort still rolls back (a promotion included)."""
    if state.phase in (PROGRESSING, AWAITING_APPROVAL):
        return True
    return state.phase == PROMOTED and any(a.kind == "move_champion" for a in state.pending)


def describe(action: Action) -> str:
    """An action in words, for messages."""
    return {
        "set_canary_alias": f"point alias canary at version {action.version}",
        "deploy_canary": f"deploy version {action.version} as the canary",
        "set_weight": f"set the canary's weight to {action.weight}%",
        "set_mirror": (f"mirror {action.percent}% of stable's traffic to the canary"
                       if action.percent else "stop mirroring traffic to the canary"),
        "promote_stable": f"deploy version {action.version} as stable",
        "remove_canary": "route all traffic to stable and delete the canary's objects",
        "move_champion": f"move alias champion to version {action.version}",
        "clear_canary_alias": "clear alias canary",
        "check": "check the gates",
    }.get(action.kind, action.kind)


def failed(state: RolloutState, action: Action, error: str) -> RolloutState | None:
    """An action failed: a forward one (deploying or weighting the canary, promoting) rolls
    the rollout back; a failing rollback action has no better answer (None: re-raise)."""
    if state.phase in (PROGRESSING, AWAITING_APPROVAL) or (
            state.phase == PROMOTED and _abortable(state)):
        return _roll_back(state, ROLLED_BACK, f"{action.kind} failed: {error}", state.figures)
    return None


def done(state: RolloutState, now: float) -> RolloutState:
    """The first pending action was carried out at `now`. A step's pause counts from when
    its weight is in place, not from when it was decided."""
    action, rest = state.pending[0], state.pending[1:]
    if action.kind in ("set_weight", "set_mirror") and state.phase == PROGRESSING:
        return replace(state, pending=rest, step_started_at=now)
    return replace(state, pending=rest)
