"""What a rollout's change of state tells the world: CloudEvents types and their data. Pure.

The controller saves the state after every decision and every action; `events(before,
after)` names what happened between two saved states, so each event is emitted once, after
the state that says it happened is stored (a restarted controller does not repeat it).
"""

from __future__ import annotations

from typing import Any

from shipyard.core.event_types import (
    GATE_FAILED,
    ROLLOUT_ABORTED,
    ROLLOUT_APPROVAL_REQUESTED,
    ROLLOUT_PAUSED,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLED_BACK,
    ROLLOUT_STARTED,
    ROLLOUT_STEP,
)
from shipyard.rollout.machine import (
    ABORTED,
    AWAITING_APPROVAL,
    PROMOTED,
    ROLLED_BACK,
    RolloutState,
)

_ENDED = {PROMOTED: ROLLOUT_PROMOTED, ROLLED_BACK: ROLLOUT_ROLLED_BACK,
          ABORTED: ROLLOUT_ABORTED}


def events(before: RolloutState | None, after: RolloutState) -> list[tuple[str, dict[str, Any]]]:
    """The events between two saved states of one rollout (`before` None: its first save)."""
    if before is not None and before.rollout_id != after.rollout_id:
        before = None  # another rollout of the model: everything about this one is new
    found: list[tuple[str, dict[str, Any]]] = []
    data = _data(after)
    if before is None:
        found.append((ROLLOUT_STARTED, data))
    entered_step = before is None or (before.step, before.phase) != (after.step, after.phase)
    if not after.ended and entered_step:
        if after.phase == AWAITING_APPROVAL:
            found.append((ROLLOUT_APPROVAL_REQUESTED, data))
        elif before is None or before.step != after.step:
            found.append((ROLLOUT_STEP, data))
    if (after.checks_without_data > (before.checks_without_data if before else 0)
            and not after.ended):
        found.append((ROLLOUT_PAUSED, data))
    if after.ended and (before is None or not before.ended):
        if after.phase == ROLLED_BACK and (after.reason or "").startswith("gates failed"):
            found.append((GATE_FAILED, data))
        found.append((_ENDED[after.phase], data))
    return found


def _data(state: RolloutState) -> dict[str, Any]:
    return {"name": state.name, "version": state.version,
            "stable_version": state.stable_version, "phase": state.phase,
            "step": state.step + 1, "weight": state.weight, "mirror": state.mirror,
            "reason": state.reason, "figures": state.figures,
            "approvals": list(state.approvals), "rollout_id": state.rollout_id}
