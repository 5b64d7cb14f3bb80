"""Alias moves and their audit trail, as plain data (pure: no MLflow).

Where the trail lives: on the MLflow registered model itself, one registered-model tag per move.
The key is `shipyard.alias_log.<UTC time in ns, 20 digits>-<8 hex>` (sortable, and unique
even when two runs move aliases at once); the value is the move as compact JSON:
`{"alias", "from", "to", "time", "user", "pipeline_run_id", "reason", "gates"}`. `from` is
null when the alias is new. Reading every tag with that prefix, sorted by key, gives the
history oldest first.

A move is written in three requests: the record as an intent (`"pending": true`), the alias,
the record again without `pending`. A process killed in between leaves a pending record;
whoever next moves an alias of the model or reads its history settles it against the alias
(shipyard.steps.alias.settle_pending): kept if the alias points where the record says, deleted if
it does not (the move never happened). So a move never exists without its record.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shipyard.core.errors import UsageError
from shipyard.core.vocabulary import ALIAS_LOG_TAG_PREFIX as LOG_TAG_PREFIX
from shipyard.core.vocabulary import CHAMPION, PUBLISHED_TAG


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: int | None
    to_version: int | None  # None: the alias was cleared
    time: str  # ISO 8601, UTC
    user: str
    reason: str
    pipeline_run_id: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_version")
        data["to"] = data.pop("to_version")
        return data


def log_tag(move: AliasMove, now_ns: int | None = None) -> tuple[str, str]:
    """(tag key, tag value) recording `move`."""
    stamp = now_ns if now_ns is not None else time.time_ns()
    key = f"{LOG_TAG_PREFIX}{stamp:020d}-{secrets.token_hex(4)}"
    return key, record_value(move.to_json())


def record_value(record: dict[str, Any], *, pending: bool = False) -> str:
    """The tag value of a move record; `pending` marks the intent written before the move."""
    data = {k: v for k, v in record.items() if k != "pending"}
    if pending:
        data["pending"] = True
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def history(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The recorded moves, oldest first, from a registered model's tags (pending intents
    included, marked `"pending": true`; settle them first to read what happened)."""
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(LOG_TAG_PREFIX)]


def pending_records(tags: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(tag key, record) of every intent not yet settled, oldest first."""
    records = [(key, json.loads(tags[key])) for key in sorted(tags)
               if key.startswith(LOG_TAG_PREFIX)]
    return [(key, record) for key, record in records if record.get("pending")]


def last_recorded_target(tags: dict[str, str], alias: str) -> tuple[bool, int | None]:
    """(found, version) of the latest settled record of `alias`: where the trail says it
    points. found is False when the trail has no record of that alias."""
    for record in reversed(history(tags)):
        if record["alias"] == alias and not record.get("pending"):
            return True, record["to"]
    return False, None


def check_move(alias: str, *, version_tags: dict[str, str], force: bool,
               by_rollout: bool) -> None:
    """Refuses moves the rules forbid: to an unpublished version, or champion by hand."""
    if version_tags.get(PUBLISHED_TAG) != "true":
        raise UsageError(f"alias {alias!r}: that version is not published (tag "
                         f"{PUBLISHED_TAG}={version_tags.get(PUBLISHED_TAG)!r}); an alias can "
                         "only point to a published version: run `shipyard register` again to "
                         "complete its publication")
    if alias == CHAMPION and not (force or by_rollout):
        raise UsageError("alias 'champion' moves only through a rollout (`shipyard rollout`); "
                         "pass --force to move it by hand, with a --reason")
