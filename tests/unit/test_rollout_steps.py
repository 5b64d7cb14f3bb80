"""Rollouts beyond weights (issue 27): mirror (shadow) steps, approval steps, minimum samples,
notifications of each change, and `rollout plan`. The pure machine and the controller, on the
fakes of the cluster, metrics and registry (support/rollout_fakes.py)."""

from __future__ import annotations

import json

import pytest
from support.rollout_fakes import FakeClock, FakeCluster, RecordingAliases, ScriptedObserver, ports

from shipyard.core.errors import SpecError, UsageError
from shipyard.rollout import controller, machine
from shipyard.rollout.events import events
from shipyard.rollout.gates import FAIL, NO_DATA, PASS, Observation, evaluate
from shipyard.rollout.plan import describe, plan
from shipyard.rollout.policy import parse_policy

POLICY = parse_policy({
    "steps": [{"mirror": 20, "pause_seconds": 60},
              {"approval": True, "timeout_seconds": 600},
              {"weight": 10, "pause_seconds": 60}, {"weight": 50, "pause_seconds": 60}],
    "gates": {"min_requests": 50, "max_error_rate": 0.01, "max_p99_latency_ms": 200},
    "check_interval_seconds": 30, "max_checks_without_data": 3,
})
GOOD = Observation(requests=500, error_rate=0.001, p99_latency_ms=80)
BAD = Observation(requests=500, error_rate=0.3, p99_latency_ms=80)
QUIET = Observation(requests=0, error_rate=None, p99_latency_ms=None)
START = [("set_canary", 2), ("deploy_canary", 2)]


class Events:
    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, event_type: str, data: dict) -> None:
        self.seen.append((event_type, data))

    @property
    def types(self) -> list[str]:
        return [t.removeprefix("io.shipyard.") for t, _ in self.seen]


def setup(observations, policy=POLICY, hooks=None):
    cluster, aliases, clock = FakeCluster(stable=1), RecordingAliases(champion=1), FakeClock()
    made = ports(cluster, ScriptedObserver(observations, hooks), aliases, clock)
    made.notify = Events()
    return cluster, aliases, clock, made


def approve_when_waiting(made, by="ana@laptop"):
    """A hook: approves the moment the stored rollout waits for it, as a person would."""
    def hook():
        state = controller.current(made, "m")
        if state.phase == machine.AWAITING_APPROVAL:
            controller.approve(made, "m", "dashboards look fine", by=by)
    return hook


def calls(cluster):
    return [c for c in cluster.calls]


# --- the whole machine --------------------------------------------------------------------

def test_mirror_then_approval_then_weights_promotes_with_the_approval_audited():
    cluster, aliases, clock, made = setup([GOOD])
    hooks = {i: approve_when_waiting(made) for i in range(20)}
    made.observer.hooks = hooks
    state = controller.start(made, "m", 2, POLICY, holder="me")

    assert state.phase == machine.PROMOTED and state.mirror == 0
    # Users never saw the canary while it was mirrored: its weight stayed 0 until the mirror
    # was gone, and the mirror went before the first weight.
    assert cluster.calls == [("deploy_canary", 2), ("set_mirror", 20), ("set_mirror", 0),
                             ("set_weight", 10), ("set_weight", 50), ("promote_stable", 2),
                             ("set_weight", 0), ("remove_canary",)]
    champion = next(m for m in aliases.moves if m[0] == "champion")
    (approval,) = champion[3]["approvals"]
    assert approval["user"] == "ana@laptop" and approval["step"] == 2
    assert approval["reason"] == "dashboards look fine"
    assert made.notify.types == ["rollout.started", "rollout.step",
                                 "rollout.approval_requested", "rollout.step", "rollout.step",
                                 "rollout.promoted"]
    started = made.notify.seen[0][1]
    assert started["name"] == "m" and started["version"] == 2 and started["mirror"] == 20


def test_nobody_approves_within_the_timeout_aborts_and_removes_the_mirror():
    cluster, aliases, clock, made = setup([GOOD])
    state = controller.start(made, "m", 2, POLICY, holder="me")

    assert state.phase == machine.ABORTED
    assert state.reason == "aborted: nobody approved step 2 within its timeout_seconds 600"
    assert cluster.calls[-3:] == [("set_weight", 0), ("set_mirror", 0), ("remove_canary",)]
    assert not any(m[0] == "champion" for m in aliases.moves)
    assert made.notify.types[-2:] == ["rollout.approval_requested", "rollout.aborted"]


def test_an_abort_rejects_a_waiting_approval():
    cluster, aliases, clock, made = setup([GOOD])

    def reject():
        state = controller.current(made, "m")
        if state.phase == machine.AWAITING_APPROVAL:
            made.cluster.save_request("m", {"rollout_id": state.rollout_id, "what": "abort",
                                            "reason": "not today"})
    made.observer.hooks = {i: reject for i in range(20)}
    state = controller.start(made, "m", 2, POLICY, holder="me")
    assert state.phase == machine.ABORTED and state.reason == "aborted: not today"


def test_while_waiting_a_failed_gate_rolls_back_and_no_data_does_not():
    policy = parse_policy({"steps": [{"weight": 10, "pause_seconds": 0}, {"approval": True}],
                           "gates": {"max_error_rate": 0.01}, "max_checks_without_data": 2,
                           "check_interval_seconds": 30})
    # Quiet far longer than max_checks_without_data, then a failure.
    cluster, aliases, clock, made = setup([GOOD] + [Observation()] * 6 + [BAD], policy)
    state = controller.start(made, "m", 2, policy, holder="me")
    assert state.phase == machine.ROLLED_BACK
    assert state.reason == "gates failed: error_rate 0.3 is outside max_error_rate 0.01"
    assert made.notify.types[-2:] == ["gate.failed", "rollout.rolled_back"]


def test_a_failed_gate_during_the_mirror_rolls_back_without_the_canary_ever_serving():
    cluster, aliases, clock, made = setup([BAD])
    state = controller.start(made, "m", 2, POLICY, holder="me")
    assert state.phase == machine.ROLLED_BACK
    assert cluster.calls == [("deploy_canary", 2), ("set_mirror", 20), ("set_weight", 0),
                             ("set_mirror", 0), ("remove_canary",)]
    assert not any(call == ("set_weight", w) for call in cluster.calls for w in (10, 50))


def test_too_few_requests_are_no_data_and_the_no_data_policy_applies():
    cluster, aliases, clock, made = setup([QUIET, Observation(requests=49, error_rate=0.0,
                                                              p99_latency_ms=5)])
    state = controller.start(made, "m", 2, POLICY, holder="me")
    assert state.phase == machine.ROLLED_BACK
    assert state.reason == ("no data for error_rate (the canary served 49 request(s), fewer "
                            "than min_requests 50), p99_latency_ms (the canary served 49 "
                            "request(s), fewer than min_requests 50) after 3 check(s)")
    assert made.notify.types.count("rollout.paused") == 2


def test_a_stale_approval_does_not_approve_a_later_step():
    policy = parse_policy({"steps": [{"approval": True}, {"weight": 10, "pause_seconds": 0},
                                     {"approval": True, "timeout_seconds": 90}],
                           "check_interval_seconds": 30})
    cluster, aliases, clock, made = setup([GOOD], policy)
    approved = []

    def once():
        state = controller.current(made, "m")
        if state.phase == machine.AWAITING_APPROVAL and not approved:
            approved.append(controller.approve(made, "m", "first", by="ana"))
    made.observer.hooks = {i: once for i in range(20)}
    state = controller.start(made, "m", 2, policy, holder="me")
    # The first approval was stored for step 1; step 3 waited for its own, and timed out.
    assert state.phase == machine.ABORTED
    assert state.reason == "aborted: nobody approved step 3 within its timeout_seconds 90"
    assert [a["step"] for a in state.approvals] == [1]


def test_approve_is_refused_unless_the_rollout_waits_for_it():
    cluster, aliases, clock, made = setup([GOOD])
    with pytest.raises(UsageError, match=r"name m: no rollout of m is in progress"):
        controller.approve(made, "m", "ok", by="ana")
    cluster.states["m"] = machine.begin(
        "m", 2, 1, parse_policy({"steps": [{"weight": 10}]}), clock()).to_json()
    with pytest.raises(UsageError, match=r"name m: the rollout of version 2 is not waiting "
                                         r"for an approval \(phase progressing, step 1\)"):
        controller.approve(made, "m", "ok", by="ana")
    assert cluster.requests == {}


def test_a_resumed_controller_does_not_repeat_the_events_already_told():
    cluster, aliases, clock, made = setup([GOOD])
    first = machine.begin("m", 2, 1, POLICY, clock())
    cluster.states["m"] = first.to_json()
    made.observer.hooks = {i: approve_when_waiting(made) for i in range(20)}
    state = controller.start(made, "m", 2, POLICY, holder="me")
    assert state.phase == machine.PROMOTED
    assert "rollout.started" not in made.notify.types


# --- the pieces -----------------------------------------------------------------------------

def test_min_requests_turns_error_and_latency_into_no_data_but_not_agreement():
    gates = parse_policy({"steps": [{"weight": 10}], "gates": {
        "min_requests": 100, "max_error_rate": 0.01,
        "agreement": {"samples": "s.jsonl", "min_top1": 0.9}}}).gates
    few = evaluate(gates, Observation(requests=99, error_rate=0.5, top1_agreement=0.95))
    assert few.outcome == NO_DATA and few.figures["requests"] == 99
    assert few.missing == ("error_rate (the canary served 99 request(s), fewer than "
                           "min_requests 100)",)
    unknown = evaluate(gates, Observation(error_rate=0.0, top1_agreement=0.95))
    assert unknown.missing == ("error_rate (the canary served an unknown number of "
                               "request(s), fewer than min_requests 100)",)
    # Agreement is judged on the samples whatever the traffic: a bad one still fails.
    assert evaluate(gates, Observation(requests=3, top1_agreement=0.5)).outcome == FAIL
    assert evaluate(gates, Observation(requests=100, error_rate=0.0,
                                       top1_agreement=0.95)).outcome == PASS
    assert evaluate(gates, Observation(requests=100, error_rate=0.5,
                                       top1_agreement=0.95)).outcome == FAIL


@pytest.mark.parametrize("data, message", [
    ({"steps": [{"weight": 10, "mirror": 5}]},
     r"steps\[0\]: give exactly one of weight, mirror and approval: true \(got weight, "
     r"mirror\)"),
    ({"steps": [{"pause_seconds": 5}]},
     r"steps\[0\]: give exactly one of weight, mirror and approval: true$"),
    ({"steps": [{"weight": 10}, {"mirror": 50}]},
     r"steps: mirror steps come before the first weight step"),
    ({"steps": [{"approval": True, "pause_seconds": 5}]},
     r"steps\[0\]: an approval step waits for `shipyard rollout approve`, not pause_seconds"),
    ({"steps": [{"weight": 10, "timeout_seconds": 5}]},
     r"steps\[0\]: timeout_seconds bounds an approval step's wait"),
    ({"steps": [{"approval": False}]}, r"steps\[0\].approval: Input should be True"),
    ({"steps": [{"mirror": 0}]}, r"steps\[0\].mirror: Input should be greater than or equal "
                                 r"to 1"),
    ({"steps": [{"mirror": 30}], "serving": {"gateway_api_version": "v1.2.1"}},
     r"steps: mirror 30 needs RequestMirror's percent, which the Gateway API has from "
     r"v1.3.0; serving.gateway_api_version is v1.2.1"),
    ({"steps": [{"weight": 10}], "serving": {"gateway_api_version": "1.3"}},
     r"serving.gateway_api_version: String should match pattern"),
    ({"steps": [{"weight": 10}], "gates": {"min_requests": 0}},
     r"gates.min_requests: Input should be greater than or equal to 1"),
])
def test_new_policy_fields_are_checked_and_named(data, message):
    with pytest.raises(SpecError, match=message):
        parse_policy(data, source="policy.yaml")


def test_a_full_mirror_works_with_the_older_gateway_api():
    policy = parse_policy({"steps": [{"mirror": 100}, {"weight": 10}],
                           "serving": {"gateway_api_version": "v1.2"}})
    assert [s.kind for s in policy.steps] == ["mirror", "weight"]


def test_plan_lists_every_step_with_what_the_canary_gets():
    planned = plan(POLICY)
    assert [(s["step"], s["kind"]) for s in planned["steps"]] == [
        (1, "mirror"), (2, "approval"), (3, "weight"), (4, "weight"), (5, "promote")]
    mirror, approval, first, second, promote = planned["steps"]
    assert (mirror["weight"], mirror["mirror"], mirror["pause_seconds"]) == (0, 20, 60)
    assert approval["timeout_seconds"] == 600 and approval["on_timeout"] == "abort"
    assert first["removes_mirror"] is True and second["removes_mirror"] is False
    assert promote["removes_mirror"] is False
    assert planned["gates"] == {"judged": {"max_error_rate": 0.01, "max_p99_latency_ms": 200},
                                "min_requests": 50}
    text = describe(planned)
    assert "1. mirror 20% of stable's traffic to the canary (weight 0" in text
    assert "2. wait for `shipyard rollout approve` (gates still judged; abort after 600 s" in text
    assert "3. stop mirroring; canary weight 10% for 60 s" in text
    assert "error and latency need at least 50 canary requests per check" in text
    json.dumps(planned)  # the --json document


def test_events_between_states():
    policy = parse_policy({"steps": [{"weight": 10}]})
    begun = machine.begin("m", 2, 1, policy, 0.0)
    assert [t for t, _ in events(None, begun)] == ["io.shipyard.rollout.started",
                                                   "io.shipyard.rollout.step"]
    assert events(begun, begun) == []
    rolled = machine.decide(begun, policy, evaluate(policy.gates, Observation()), 1.0)
    assert events(begun, rolled) == []  # no gate configured: pass, nothing happened yet
    aborted = machine.decide(machine.request(begun, machine.ABORT, "x"), policy, None, 2.0)
    assert [t for t, _ in events(begun, aborted)] == ["io.shipyard.rollout.aborted"]
    other = machine.begin("m", 3, 1, policy, 5.0)  # another rollout: all new again
    assert [t for t, _ in events(aborted, other)][0] == "io.shipyard.rollout.started"


def test_the_docs_example_policy_is_valid_and_plans_as_shown():
    """The docs' policy (docs/rollout-policy.md) uses every kind of step and field: it must stay
    a policy `rollout start` accepts, and its printed plan the one the page shows.
    (tests/integration/test_docs_examples.py also runs `rollout plan` on it.)"""
    import re
    from pathlib import Path

    import yaml

    page = (Path(__file__).parents[2] / "docs" / "rollout-policy.md").read_text()
    block = page.split("`POLICY.yaml`, with every kind of step and field:\n")[1]
    block = block.split("```yaml\n", 1)[1]
    policy = parse_policy(yaml.safe_load(block.split("```")[0]), source="rollout-policy.md")
    assert {s.kind for s in policy.steps} == {"mirror", "approval", "weight"}
    assert policy.gates.min_requests and policy.notify
    shown = page.split("For the policy above:\n\n```\n")[1].split("```")[0]
    printed = describe(plan(policy)).replace(policy.gates.agreement.samples,
                                             "/srv/policies/samples.jsonl")
    assert printed.strip() == shown.strip()
    assert re.search(r"rollout plan --policy POLICY.yaml", page)


def test_a_pending_abort_is_never_overwritten_by_an_approval():
    """promote, abort and approve share one request key per model: an approval must not
    replace an abort the controller has not read yet."""
    cluster, aliases, clock, made = setup([GOOD])
    waiting = machine.begin("m", 2, 1, parse_policy({"steps": [{"approval": True}]}), clock())
    cluster.states["m"] = waiting.to_json()
    cluster.save_request("m", {"rollout_id": waiting.rollout_id, "what": "abort",
                               "reason": "bad latency"})
    with pytest.raises(UsageError, match=r"name m: the abort request of this rollout is pending "
                                         r"\(bad latency\)"):
        controller.approve(made, "m", "looks fine", by="ana")
    assert cluster.requests["m"]["what"] == "abort"
