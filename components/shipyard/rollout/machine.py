"""The canary rollout as a state machine. Pure: decisions only; the controller carries them out.

    begin        -> point alias canary at N, deploy the canary, set the first step's weight
    each check   -> abort requested: roll back; promote requested: promote;
                    gates fail: roll back; no data: pause (or fail/pass, as the policy says;
                    fail after max_checks_without_data); gates pass for the step's pause:
                    next step's weight, or promote after the last step
    promote      -> stable serves N, weight 0, canary removed, champion = N, alias canary cleared
    roll back    -> weight 0 first, canary removed, alias canary cleared; champion unchanged

State is plain data (JSON) so the controller can store it in the cluster and a restarted
controller can resume; actions not yet carried out are part of the state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shipyard.rollout.gates import FAIL, NO_DATA, GateResult
from shipyard.rollout.policy import RolloutPolicy

PROGRESSING, PROMOTED, ROLLED_BACK, ABORTED = "progressing", "promoted", "rolled_back", "aborted"
TERMINAL = (PROMOTED, ROLLED_BACK, ABORTED)
PROMOTE, ABORT = "promote", "abort"


@dataclass(frozen=True)
class Action:
    """One thing the controller does. kind: set_canary_alias | deploy_canary | set_weight |
    promote_stable | remove_canary | move_champion | clear_canary_alias."""

    kind: str
    version: int | None = None
    weight: int | None = None
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
    requested: str | None = None  # PROMOTE | ABORT, written by `rollout promote|abort`
    request_reason: str | None = None
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
        return cls(**fields)


def begin(name: str, version: int, stable_version: int | None, policy: RolloutPolicy,
          now: float) -> RolloutState:
    first = policy.steps[0].weight
    settings = policy.serving.model_dump()
    rollout_id = f"{version}-{int(now * 1000)}"
    if stable_version is None:  # nothing serves yet: no canary to compare, deploy N directly
        return _promote(RolloutState(name=name, version=version, stable_version=None,
                                     step_started_at=now, settings=settings,
                                     rollout_id=rollout_id),
                        "first deployment: no stable version to compare with", {})
    return RolloutState(
        name=name, version=version, stable_version=stable_version, weight=first,
        step_started_at=now, settings=settings, rollout_id=rollout_id,
        pending=(Action("set_canary_alias", version=version,
                        reason=f"rollout of version {version} started"),
                 Action("deploy_canary", version=version),
                 Action("set_weight", weight=first)))


def request(state: RolloutState, what: str, reason: str | None = None) -> RolloutState:
    """Records `rollout promote|abort`; the next decision acts on it."""
    if state.terminal:
        return state
    return replace(state, requested=what, request_reason=reason)


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
    if state.step + 1 == len(policy.steps):
        return _promote(state, f"all {len(policy.steps)} step(s) passed their gates", figures)
    step = state.step + 1
    weight = policy.steps[step].weight
    return replace(state, step=step, weight=weight, step_started_at=now,
                   pending=(Action("set_weight", weight=weight),))


def _promote(state: RolloutState, reason: str, figures: dict[str, Any]) -> RolloutState:
    return replace(state, phase=PROMOTED, reason=reason, figures=figures, weight=0, pending=(
        Action("promote_stable", version=state.version),
        Action("set_weight", weight=0),
        Action("remove_canary"),
        Action("move_champion", version=state.version, reason=reason, gates=figures),
        Action("clear_canary_alias", reason=reason, gates=figures),
    ))


def _roll_back(state: RolloutState, phase: str, reason: str,
               figures: dict[str, Any]) -> RolloutState:
    actions = [Action("set_weight", weight=0)]  # traffic leaves the canary before anything
    if state.phase == PROMOTED and state.stable_version is not None:
        # A promotion under way may have half-moved the stable Deployment: put it back.
        actions.append(Action("promote_stable", version=state.stable_version))
    actions += [Action("remove_canary"),
                Action("clear_canary_alias", reason=reason, gates=figures)]
    return replace(state, phase=phase, reason=reason, figures=figures, weight=0,
                   pending=tuple(actions))


def _abortable(state: RolloutState) -> bool:
    """Until the champion has moved, an abort still rolls back (a promotion included)."""
    if state.phase == PROGRESSING:
        return True
    return state.phase == PROMOTED and any(a.kind == "move_champion" for a in state.pending)


def describe(action: Action) -> str:
    """An action in words, for messages."""
    return {
        "set_canary_alias": f"point alias canary at version {action.version}",
        "deploy_canary": f"deploy version {action.version} as the canary",
        "set_weight": f"set the canary's weight to {action.weight}%",
        "promote_stable": f"deploy version {action.version} as stable",
        "remove_canary": "route all traffic to stable and delete the canary's objects",
        "move_champion": f"move alias champion to version {action.version}",
        "clear_canary_alias": "clear alias canary",
        "check": "check the gates",
    }.get(action.kind, action.kind)


def failed(state: RolloutState, action: Action, error: str) -> RolloutState | None:
    """An action failed: a forward one (deploying or weighting the canary, promoting) rolls
    the rollout back; a failing rollback action has no better answer (None: re-raise)."""
    if state.phase == PROGRESSING or (state.phase == PROMOTED and _abortable(state)):
        return _roll_back(state, ROLLED_BACK, f"{action.kind} failed: {error}", state.figures)
    return None


def done(state: RolloutState, now: float) -> RolloutState:
    """The first pending action was carried out at `now`. A step's pause counts from when
    its weight is in place, not from when it was decided."""
    action, rest = state.pending[0], state.pending[1:]
    if action.kind == "set_weight" and state.phase == PROGRESSING:
        return replace(state, pending=rest, step_started_at=now)
    return replace(state, pending=rest)
