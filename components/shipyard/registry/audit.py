"""Alias moves and their audit trail, as plain data (pure: no MLflow).

Where the trail lives: on the MLflow registered model itself, one registered-model tag per move.
The key is `shipyard.alias_log.<UTC time in ns, 20 digits>-<8 hex>` (sortable, and unique
even when two runs move aliases at once); the value is the move as compact JSON:
`{"alias", "from", "to", "time", "user", "pipeline_run_id", "reason", "gates"}`. `from` is
null when the alias is new. Reading every tag with that prefix, sorted by key, gives the
history oldest first.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shipyard.errors import UsageError

LOG_TAG_PREFIX = "shipyard.alias_log."
CHAMPION = "champion"
CANDIDATE = "candidate"
PUBLISHED_TAG = "shipyard.published"


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
    return key, json.dumps(move.to_json(), sort_keys=True, separators=(",", ":"))


def history(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The recorded moves, oldest first, from a registered model's tags."""
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(LOG_TAG_PREFIX)]


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
