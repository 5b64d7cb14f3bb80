"""Alias moves as data: the audit trail's form and the rules for moving (pure)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from support.manifests import bare_manifest

from shipyard.core.audit import (
    AliasMove,
    check_move,
    history,
    last_recorded_target,
    log_tag,
    pending_records,
    record_value,
)
from shipyard.core.errors import UsageError
from shipyard.steps.register import flatten_params


def move(alias="candidate", to=2, frm=1):
    return AliasMove(alias=alias, from_version=frm, to_version=to, time="2026-11-23T10:00:00+00:00",
                     user="ci", reason="because", pipeline_run_id="run-7",
                     gates={"error_rate": 0.001})


def test_history_is_oldest_first_and_ignores_other_tags():
    first = log_tag(move(to=1, frm=None), now_ns=10)
    second = log_tag(move(alias="champion", to=1, frm=None), now_ns=2 * 10**18)
    third = log_tag(move(to=2), now_ns=3 * 10**18)
    tags = dict([third, first, second], **{"team": "search", "shipyard.fingerprint": "x"})
    recorded = history(tags)
    assert [(m["alias"], m["from"], m["to"]) for m in recorded] == [
        ("candidate", None, 1), ("champion", None, 1), ("candidate", 1, 2)]
    assert recorded[2] == {"alias": "candidate", "from": 1, "to": 2,
                           "time": "2026-11-23T10:00:00+00:00", "user": "ci",
                           "reason": "because", "pipeline_run_id": "run-7",
                           "gates": {"error_rate": 0.001}}


def test_two_moves_in_the_same_nanosecond_get_distinct_keys():
    a, b = log_tag(move(), now_ns=5), log_tag(move(), now_ns=5)
    assert a[0] != b[0]
    assert json.loads(a[1]) == json.loads(b[1])


def test_only_published_versions_take_aliases():
    with pytest.raises(UsageError, match=r"alias 'canary': that version is not published \(tag "
                                         r"shipyard.published='false'\)"):
        check_move("canary", version_tags={"shipyard.published": "false"}, force=False,
                   by_rollout=False)


def test_champion_moves_only_by_rollout_or_force():
    published = {"shipyard.published": "true"}
    with pytest.raises(UsageError, match=r"alias 'champion' moves only through a rollout .* "
                                         r"pass --force"):
        check_move("champion", version_tags=published, force=False, by_rollout=False)
    check_move("champion", version_tags=published, force=True, by_rollout=False)
    check_move("champion", version_tags=published, force=False, by_rollout=True)
    check_move("canary", version_tags=published, force=False, by_rollout=False)


def test_params_flatten_the_spec_and_the_source():
    manifest = dataclasses.replace(
        bare_manifest([]),
        spec={"endpoints": [{"name": "serve", "inputs": [{"x": {"shape": [None, 3]}}]}],
              "tolerance": {"atol": 1e-05}},
        source={"path": "/m.keras", "format": "keras", "sha256": None})
    assert flatten_params(manifest) == {
        "spec.endpoints.0.name": "serve",
        "spec.endpoints.0.inputs.0.x.shape": "[null, 3]",
        "spec.tolerance.atol": "1e-05",
        "source.path": "/m.keras", "source.format": "keras", "source.sha256": "null"}


def test_an_intent_is_the_record_marked_pending_until_settled():
    key, value = log_tag(move(to=2), now_ns=10)
    intent = record_value(json.loads(value), pending=True)
    assert json.loads(intent) == {**json.loads(value), "pending": True}
    assert record_value(json.loads(intent)) == value  # settling drops the mark, nothing else
    later_key, later = log_tag(move(alias="canary", to=3, frm=None), now_ns=20)
    tags = {key: intent, later_key: later}
    assert pending_records(tags) == [(key, json.loads(intent))]
    # Where the trail says an alias points: pending intents do not count.
    assert last_recorded_target(tags, "candidate") == (False, None)
    assert last_recorded_target(tags, "canary") == (True, 3)
    assert last_recorded_target({key: value, **tags}, "champion") == (False, None)


def test_a_move_to_an_invalid_version_is_refused_before_the_registry_is_asked():
    from shipyard.core.errors import UsageError
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.steps.alias import move_alias

    # Nothing listens on port 1: asking the registry would fail with exit 6 instead.
    registry = ModelRegistry(RegistryLocation.resolve("http://127.0.0.1:1", None))
    with pytest.raises(UsageError, match=r"^version: 0 is not a valid version\. Expected an "
                                         r"integer from 1 to 9223372036854775807"):
        move_alias(registry, "m", "candidate", 0, reason="r")
