"""The types of the events shipyard tells (CloudEvents `type`), spelled once: notify/ sends
them, rollout/events.py decides which a rollout's change of state is. Who emits which, and
what its data is: docs/notifications.md."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "io.shipyard."
VERSION_PUBLISHED: Final = PREFIX + "version.published"
ALIAS_MOVED: Final = PREFIX + "alias.moved"
SERVING_LABELS_CHANGED: Final = PREFIX + "serving.labels_changed"
ROLLOUT_STARTED: Final = PREFIX + "rollout.started"
ROLLOUT_STEP: Final = PREFIX + "rollout.step"
ROLLOUT_PAUSED: Final = PREFIX + "rollout.paused"
ROLLOUT_APPROVAL_REQUESTED: Final = PREFIX + "rollout.approval_requested"
# Beyond the list: `rollout approve` tells who approved which step, when it stores it.
ROLLOUT_APPROVED: Final = PREFIX + "rollout.approved"
ROLLOUT_PROMOTED: Final = PREFIX + "rollout.promoted"
ROLLOUT_ROLLED_BACK: Final = PREFIX + "rollout.rolled_back"
ROLLOUT_ABORTED: Final = PREFIX + "rollout.aborted"
GATE_FAILED: Final = PREFIX + "gate.failed"
EVENT_TYPES: Final = (VERSION_PUBLISHED, ALIAS_MOVED, SERVING_LABELS_CHANGED, ROLLOUT_STARTED,
                      ROLLOUT_STEP, ROLLOUT_PAUSED, ROLLOUT_APPROVAL_REQUESTED, ROLLOUT_APPROVED,
                      ROLLOUT_PROMOTED,
                      ROLLOUT_ROLLED_BACK, ROLLOUT_ABORTED, GATE_FAILED)
