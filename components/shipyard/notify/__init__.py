"""Notifications: shipyard's changes as CloudEvents 1.0 over HTTP (structured JSON mode,
signed with $SHIPYARD_NOTIFY_SECRET), delivered within a bound and never failing the command.

    notifier = Notifier.from_options(urls, command="alias-set")  # --notify and SHIPYARD_NOTIFY
    notifier.emit(ALIAS_MOVED, "churn", move.to_json())           # after the change is durable

events.py builds and signs (pure); delivery.py sends, retries and keeps what was not
delivered in .shipyard/undelivered-events.jsonl."""

from shipyard.core.event_types import (
    ALIAS_MOVED,
    EVENT_TYPES,
    GATE_FAILED,
    ROLLOUT_ABORTED,
    ROLLOUT_APPROVAL_REQUESTED,
    ROLLOUT_APPROVED,
    ROLLOUT_PAUSED,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLED_BACK,
    ROLLOUT_STARTED,
    ROLLOUT_STEP,
    SERVING_LABELS_CHANGED,
    VERSION_PUBLISHED,
)
from shipyard.notify.delivery import UNDELIVERED_PATH, Notifier, Undelivered, notify

__all__ = ["ALIAS_MOVED", "EVENT_TYPES", "GATE_FAILED", "ROLLOUT_ABORTED",
           "ROLLOUT_APPROVAL_REQUESTED", "ROLLOUT_APPROVED", "ROLLOUT_PAUSED", "ROLLOUT_PROMOTED",
           "ROLLOUT_ROLLED_BACK", "ROLLOUT_STARTED", "ROLLOUT_STEP", "SERVING_LABELS_CHANGED",
           "UNDELIVERED_PATH", "VERSION_PUBLISHED", "Notifier", "Undelivered", "notify"]
