"""The rollout policy, gates, metrics windows, state machine and controller (pure, with fakes
of the cluster, metrics and registry interfaces)."""

from __future__ import annotations

import itertools

import pytest
from support.rollout_fakes import (
    Crash,
    FakeClock,
    FakeCluster,
    RecordingAliases,
    ScriptedObserver,
    ports,
)

from shipyard.core.errors import LeaseHeldError, SpecError, UsageError
from shipyard.kube.metrics import parse_scrape, window
from shipyard.rollout import controller, machine
from shipyard.rollout.gates import FAIL, NO_DATA, PASS, Observation, evaluate
from shipyard.rollout.policy import parse_policy

POLICY = parse_policy({
    "steps": [{"weight": 10, "pause_seconds": 60}, {"weight": 50, "pause_seconds": 60},
              {"weight": 100, "pause_seconds": 30}],
    "gates": {"max_error_rate": 0.01, "max_p99_latency_ms": 200,
              "agreement": {"samples": "s.jsonl", "min_top1": 0.9}},
    "check_interval_seconds": 30, "max_checks_without_data": 3,
})
GOOD = Observation(error_rate=0.001, p99_latency_ms=80, top1_agreement=0.99)
BAD = Observation(error_rate=0.2, p99_latency_ms=80, top1_agreement=0.99)
EMPTY = Observation()
PROMOTION_TAIL = [("promote_stable", 2), ("set_weight", 0), ("remove_canary",)]
ROLLBACK_TAIL = [("set_weight", 0), ("remove_canary",)]


# --- policy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"steps": []}, r"steps: List should have at least 1 item"),
    ({"steps": [{"weight": 50}, {"weight": 10}]},
     r"<top level>: steps: weights must not decrease, got \[50, 10\]"),
    ({"steps": [{"weight": 150}]}, r"steps\[0\].weight: Input should be less than or equal "
                                   r"to 100 \(got 150\)"),
    ({"steps": [{"weight": 10}], "gates": {"agreement": {"samples": "s"}}},
     r"gates.agreement: give exactly one of min_top1 and max_abs_diff"),
    ({"steps": [{"weight": 10}], "no_data": "ignore"}, r"no_data: Input should be 'pause', "
                                                       r"'fail' or 'pass' \(got 'ignore'\)"),
    ({"steps": [{"weight": 10, "pause": 5}]}, r"steps\[0\].pause: unknown field"),
    (["steps"], r"policy.yaml: expected a mapping with a 'steps' list"),
])
def test_policy_errors_name_the_field(data, message):
    with pytest.raises(SpecError, match=message):
        parse_policy(data, source="policy.yaml")


# --- gates and metrics -----------------------------------------------------------------------

def test_gates_fail_on_any_bad_figure_and_wait_for_missing_ones():
    assert evaluate(POLICY.gates, GOOD).outcome == PASS
    failed = evaluate(POLICY.gates, Observation(error_rate=0.2))  # others missing: still fail
    assert failed.outcome == FAIL
    assert failed.failures == ("error_rate 0.2 is outside max_error_rate 0.01",)
    missing = evaluate(POLICY.gates, Observation(error_rate=0.0, p99_latency_ms=10))
    assert missing.outcome == NO_DATA and missing.missing == ("top1_agreement",)
    assert evaluate(POLICY.gates, Observation(error_rate=0, p99_latency_ms=500,
                                              top1_agreement=1)).failures == (
        "p99_latency_ms 500 is outside max_p99_latency_ms 200",)


def test_a_failed_gate_is_reported_when_the_policy_sets_only_some_limits():
    """Only the broken limit is formatted: a policy without max_p99_latency_ms (None) used
    to crash the report of a failing error rate with a TypeError."""
    gates = parse_policy({"steps": [{"weight": 10}], "gates": {"max_error_rate": 0.01}},
                         source="policy.yaml").gates
    assert gates.max_p99_latency_ms is None
    failed = evaluate(gates, Observation(error_rate=0.5, p99_latency_ms=9000))
    assert failed.outcome == FAIL
    assert failed.failures == ("error_rate 0.5 is outside max_error_rate 0.01",)


SCRAPE = """\
# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{{model_name="m",status="OK"}} {ok}
:tensorflow:serving:request_count{{model_name="m",status="INVALID_ARGUMENT"}} {bad}
:tensorflow:serving:request_count{{model_name="other",status="OK"}} 999
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_bucket{{model_name="m",API="predict",entrypoint="GRPC",le="10000"}} {fast}
:tensorflow:serving:request_latency_bucket{{model_name="m",API="predict",entrypoint="GRPC",le="100000"}} {slow}
:tensorflow:serving:request_latency_bucket{{model_name="m",API="predict",entrypoint="GRPC",le="+Inf"}} {slow}
:tensorflow:serving:request_latency_sum{{model_name="m",API="predict",entrypoint="GRPC"}} 1
:tensorflow:serving:request_latency_count{{model_name="m",API="predict",entrypoint="GRPC"}} {slow}
"""


def test_a_metrics_window_gives_error_rate_and_p99_of_the_requests_in_it():
    before = parse_scrape(SCRAPE.format(ok=100, bad=0, fast=100, slow=100), "m")
    after = parse_scrape(SCRAPE.format(ok=295, bad=5, fast=298, slow=300), "m")
    error_rate, p99, requests = window(before, after)
    assert error_rate == pytest.approx(5 / 200)
    assert p99 == 10.0  # 198 of 200 (99%) answered within 10 000 µs
    slower = parse_scrape(SCRAPE.format(ok=300, bad=0, fast=290, slow=300), "m")
    assert window(before, slower)[1] == 100.0
    assert requests == 200
    assert window(after, after) == (None, None, 0.0)  # no requests: no data
    pods = before + before
    assert pods.requests["OK"] == 200


# --- the state machine -----------------------------------------------------------------------

def run_checks(outcomes: list[Observation], clock: FakeClock | None = None):
    clock = clock or FakeClock()
    state = machine.begin("m", 2, 1, POLICY, clock.now)
    state = machine.RolloutState.from_json(state.to_json())  # survives storage
    assert [a.kind for a in state.pending] == ["set_canary_alias", "deploy_canary",
                                               "set_weight"]
    state = _no_pending(state)
    for seen in outcomes:
        clock.sleep(POLICY.check_interval_seconds)
        state = machine.decide(state, POLICY, evaluate(POLICY.gates, seen), clock.now)
        if state.terminal:
            return state
        state = _no_pending(state)
    return state


def _no_pending(state):
    while state.pending:
        state = machine.done(state, state.step_started_at)
    return state


def checks_to_reach(step: int) -> int:
    """Passing checks (30 s apart) that end in `step` (0-based)."""
    return {0: 0, 1: 2, 2: 4}[step]


@pytest.mark.parametrize("step, outcome", list(itertools.product(range(3), ["pass", "fail",
                                                                        "no_data"])))
def test_every_step_with_every_gate_outcome(step, outcome):
    before = run_checks([GOOD] * checks_to_reach(step))
    assert before.step == step and before.weight == POLICY.steps[step].weight
    seen = {"pass": GOOD, "fail": BAD, "no_data": EMPTY}[outcome]
    after = machine.decide(before, POLICY, evaluate(POLICY.gates, seen),
                           before.step_started_at + 1000)
    if outcome == "pass":
        if step == 2:
            assert after.phase == machine.PROMOTED
            assert [a.kind for a in after.pending] == [
                "promote_stable", "set_weight", "remove_canary", "move_champion",
                "clear_canary_alias"]
        else:
            assert after.step == step + 1 and not after.terminal
            assert after.pending == (machine.Action("set_weight",
                                                    weight=POLICY.steps[step + 1].weight),)
    elif outcome == "fail":
        assert after.phase == machine.ROLLED_BACK
        assert after.reason == "gates failed: error_rate 0.2 is outside max_error_rate 0.01"
        assert [a.kind for a in after.pending] == ["set_weight", "remove_canary",
                                                   "clear_canary_alias"]
        assert after.pending[0].weight == 0 and after.pending[2].gates["error_rate"] == 0.2
    else:
        assert not after.terminal and after.step == step and after.pending == ()
        assert after.checks_without_data == 1


@pytest.mark.parametrize("step", range(3))
def test_abort_at_every_step_rolls_back_at_once(step):
    state = machine.request(run_checks([GOOD] * checks_to_reach(step)), machine.ABORT,
                            "pager went off")
    after = machine.decide(state, POLICY, None, state.step_started_at)
    assert after.phase == machine.ABORTED and after.reason == "aborted: pager went off"
    assert after.pending[0] == machine.Action("set_weight", weight=0)


def test_no_data_pauses_the_step_then_fails_after_the_limit():
    state = run_checks([GOOD, EMPTY, EMPTY])
    assert state.step == 0 and state.checks_without_data == 2  # paused, not advanced
    state = run_checks([GOOD, EMPTY, EMPTY, EMPTY])
    assert state.phase == machine.ROLLED_BACK
    assert state.reason == "no data for error_rate, p99_latency_ms, top1_agreement after 3 " \
                           "check(s)"
    resumed = run_checks([EMPTY, EMPTY, GOOD, GOOD, GOOD])
    assert resumed.step == 1  # the paused checks did not count towards the step's pause


@pytest.mark.parametrize("no_data, phase", [("fail", machine.ROLLED_BACK),
                                            ("pass", machine.PROMOTED)])
def test_the_policy_decides_what_no_data_does(no_data, phase):
    policy = POLICY.model_copy(update={"no_data": no_data})
    state = _no_pending(machine.begin("m", 2, 1, policy, 0.0))
    for now in range(30, 400, 30):
        state = machine.decide(state, policy, evaluate(policy.gates, EMPTY), float(now))
        if state.terminal:
            break
        state = _no_pending(state)
    assert state.phase == phase


def test_the_first_deployment_has_nothing_to_compare_and_goes_straight_to_stable():
    state = machine.begin("m", 1, None, POLICY, 0.0)
    assert state.phase == machine.PROMOTED
    assert state.reason == "first deployment: no stable version to compare with"
    assert [a.kind for a in state.pending][:1] == ["promote_stable"]


# --- the controller with fakes ---------------------------------------------------------------

def test_a_rollout_that_passes_every_gate_is_promoted():
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    done = controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "m", 2, POLICY,
                            holder="ci-run-7")
    assert done.phase == machine.PROMOTED
    assert cluster.calls == [("deploy_canary", 2), ("set_weight", 10), ("set_weight", 50),
                             ("set_weight", 100)] + PROMOTION_TAIL
    assert cluster.stable == 2 and cluster.canary is None and cluster.weight == 0
    assert aliases.champion_version == 2 and aliases.canary is None
    assert [m[:2] for m in aliases.moves] == [("canary", 2), ("champion", 2), ("canary", None)]
    assert aliases.moves[1][3] == {"error_rate": 0.001, "p99_latency_ms": 80,
                                   "top1_agreement": 0.99}
    assert cluster.holder is None  # the Lease is released


@pytest.mark.parametrize("failing_check", range(5))
def test_a_failing_gate_at_any_check_rolls_back_and_keeps_the_champion(failing_check):
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    observer = ScriptedObserver([GOOD] * failing_check + [BAD])
    done = controller.start(ports(cluster, observer, aliases), "m", 2, POLICY, holder="h")
    assert done.phase == machine.ROLLED_BACK
    assert cluster.calls[-2:] == ROLLBACK_TAIL and cluster.stable == 1
    assert aliases.champion_version == 1 and aliases.canary is None
    assert aliases.moves[-1][2].startswith("gates failed: error_rate 0.2")
    assert aliases.moves[-1][3]["error_rate"] == 0.2


@pytest.mark.parametrize("abort_before_check", range(5))
def test_abort_from_another_process_at_every_step(abort_before_check):
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    p = None

    def abort():  # `shipyard rollout abort` while the controller holds the Lease
        state = controller.request(p, "m", machine.ABORT, "latency alert", holder="operator")
        assert state.requested == machine.ABORT  # recorded, left to the controller

    observer = ScriptedObserver([GOOD], hooks={abort_before_check: abort})
    p = ports(cluster, observer, aliases)
    done = controller.start(p, "m", 2, POLICY, holder="controller")
    assert done.phase == machine.ABORTED and done.reason == "aborted: latency alert"
    assert cluster.calls[-2:] == ROLLBACK_TAIL and aliases.champion_version == 1


def test_promote_and_abort_by_hand_act_at_once_when_no_controller_runs():
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    p = ports(cluster, ScriptedObserver([GOOD]), aliases)
    interrupted = FakeCluster(stable=1)
    interrupted.crash_on = ("set_weight", 50)
    with pytest.raises(Crash):
        controller.start(ports(interrupted, ScriptedObserver([GOOD]), aliases), "m", 2, POLICY,
                         holder="h")
    cluster.states, cluster.calls = interrupted.states, []
    promoted = controller.request(p, "m", machine.PROMOTE, "looks good", holder="operator")
    assert promoted.phase == machine.PROMOTED and promoted.reason == "promoted by hand: " \
                                                                     "looks good"
    assert cluster.calls[0] == ("set_weight", 50)  # the interrupted action, finished first
    assert cluster.calls[-3:] == PROMOTION_TAIL and aliases.champion_version == 2
    with pytest.raises(UsageError, match=r"^name m: no rollout of m is in progress \(the last "
                                         r"one ended promoted: promoted by hand"):
        controller.request(p, "m", machine.ABORT, "too late", holder="operator")


@pytest.mark.parametrize("crash", [("deploy_canary", 2), ("set_weight", 10), ("set_weight", 50),
                                   ("set_weight", 100), ("promote_stable", 2),
                                   ("remove_canary",)])
def test_a_restarted_controller_resumes_where_it_stopped(crash):
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    cluster.crash_on = crash
    p = ports(cluster, ScriptedObserver([GOOD]), aliases)
    with pytest.raises(Crash):
        controller.start(p, "m", 2, POLICY, holder="pod-a")
    assert cluster.holder is None  # a dead holder's Lease expires; the fake releases it
    done = controller.start(p, "m", 2, POLICY, holder="pod-b")
    assert done.phase == machine.PROMOTED
    # Every action happened exactly once, in order, across the two controllers.
    assert cluster.calls == [("deploy_canary", 2), ("set_weight", 10), ("set_weight", 50),
                             ("set_weight", 100)] + PROMOTION_TAIL
    assert [m[:2] for m in aliases.moves] == [("canary", 2), ("champion", 2), ("canary", None)]


def test_a_second_rollout_of_the_model_fails_naming_the_holder():
    cluster = FakeCluster(stable=1, holder="scheduled-run-41")
    p = ports(cluster, ScriptedObserver([GOOD]), RecordingAliases())
    with pytest.raises(LeaseHeldError, match=r"rollout of m is held by scheduled-run-41"):
        controller.start(p, "m", 2, POLICY, holder="scheduled-run-42")
    assert cluster.calls == []


def test_starting_another_version_during_a_rollout_is_refused():
    cluster = FakeCluster(stable=1)
    cluster.crash_on = ("set_weight", 50)
    p = ports(cluster, ScriptedObserver([GOOD]), RecordingAliases())
    with pytest.raises(Crash):
        controller.start(p, "m", 2, POLICY, holder="h")
    with pytest.raises(UsageError, match=r"^version 3: a rollout of m version 2 is in progress "
                                         r"\(phase progressing, step 2\); finish it with "
                                         r"`shipyard rollout promote --name m`"):
        controller.start(p, "m", 3, POLICY, holder="h")


def test_a_canary_that_never_becomes_ready_is_rolled_back():
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    cluster.fail_on = ("deploy_canary", 2)
    done = controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "m", 2, POLICY,
                            holder="h")
    assert done.phase == machine.ROLLED_BACK
    assert done.reason == "deploy_canary failed: deploy_canary timed out"
    assert cluster.calls == ROLLBACK_TAIL  # no weight ever went to it
    assert aliases.canary is None and aliases.champion_version == 1


def test_a_promotion_that_fails_puts_the_stable_version_back():
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    cluster.fail_on = ("promote_stable", 2)
    done = controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "m", 2, POLICY,
                            holder="h")
    assert done.phase == machine.ROLLED_BACK and done.reason.startswith("promote_stable failed")
    assert cluster.calls[-3:] == [("set_weight", 0), ("promote_stable", 1), ("remove_canary",)]
    assert aliases.champion_version == 1 and aliases.canary is None


def test_an_abort_preempts_forward_actions_left_by_a_dead_controller():
    cluster, aliases = FakeCluster(stable=1), RecordingAliases(champion=1)
    cluster.crash_on = ("deploy_canary", 2)
    p = ports(cluster, ScriptedObserver([GOOD]), aliases)
    with pytest.raises(Crash):
        controller.start(p, "m", 2, POLICY, holder="dead")
    aborted = controller.request(p, "m", machine.ABORT, "bad canary image", holder="operator")
    assert aborted.phase == machine.ABORTED and aborted.terminal
    assert ("deploy_canary", 2) not in cluster.calls  # never deployed, never weighted
    assert cluster.calls == ROLLBACK_TAIL and aliases.canary is None


def test_a_controller_that_loses_its_lease_stops_acting():
    cluster = FakeCluster(stable=1)
    cluster.lose_lease_after = 3
    p = ports(cluster, ScriptedObserver([GOOD]), RecordingAliases())
    with pytest.raises(LeaseHeldError, match="lost the Lease"):
        controller.start(p, "m", 2, POLICY, holder="h")
    assert len(cluster.calls) == 2  # deploy_canary and the first weight, then nothing


def test_an_empty_namespace_is_a_first_deployment_only_without_a_champion():
    p = ports(FakeCluster(stable=None), ScriptedObserver([GOOD]), RecordingAliases(champion=4))
    with pytest.raises(UsageError, match=r"^version 5: nothing serves m in this namespace, but "
                                         r"version 4 is its champion. Check --namespace"):
        controller.start(p, "m", 5, POLICY, holder="h")
    cluster, aliases = FakeCluster(stable=None), RecordingAliases(champion=None)
    first = controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "m", 1, POLICY,
                             holder="h")
    assert first.phase == machine.PROMOTED and cluster.stable == 1
    assert aliases.champion_version == 1


def test_a_step_pause_counts_from_when_its_weight_is_in_place():
    state = machine.begin("m", 2, 1, POLICY, 0.0)
    for _ in range(2):
        state = machine.done(state, 0.0)
    state = machine.done(state, 500.0)  # the weight landed late (a slow canary deploy)
    assert state.step_started_at == 500.0
    early = machine.decide(state, POLICY, evaluate(POLICY.gates, GOOD), 530.0)
    assert early.step == 0  # only 30 s of the 60 s pause held so far


def test_agreement_samples_are_read_next_to_the_policy_and_checked(tmp_path):
    from shipyard.rollout.policy import load_policy

    policy = {"steps": [{"weight": 10}],
              "gates": {"agreement": {"samples": "samples.jsonl", "min_top1": 0.9}}}
    (tmp_path / "policy.yaml").write_text(__import__("yaml").safe_dump(policy))
    with pytest.raises(SpecError, match=r"gates.agreement.samples: cannot read .*samples.jsonl"):
        load_policy(tmp_path / "policy.yaml")
    (tmp_path / "samples.jsonl").write_text('{"rows": [1]}\n')
    with pytest.raises(SpecError, match=r"samples.jsonl:1: expected a TF Serving REST predict "
                                        r"body"):
        load_policy(tmp_path / "policy.yaml")
    (tmp_path / "samples.jsonl").write_text('{"instances": [[1, 2, 3]]}\n')
    loaded = load_policy(tmp_path / "policy.yaml")
    assert loaded.gates.agreement.samples == str(tmp_path / "samples.jsonl")


def test_predictions_of_another_shape_fail_instead_of_broadcasting():
    from shipyard.kube.observe import compare_predictions

    assert compare_predictions([[[0.1, 0.9], [0.8, 0.2]]], [[[0.2, 0.8], [0.3, 0.7]]]) == (
        0.5, pytest.approx(0.5))
    assert compare_predictions([[{"a": 1.0, "b": 2.0}]], [[{"a": 1.0, "b": 2.5}]])[1] == 0.5
    with pytest.raises(ValueError, match=r"the canary answers with shape \[2, 3\] where the "
                                         r"stable version answers \[2, 1\]"):
        compare_predictions([[[1.0], [2.0]]], [[[1.0, 0, 0], [2.0, 0, 0]]])


def test_measuring_errors_fail_the_gates():
    result = evaluate(POLICY.gates, Observation(error_rate=0.0, p99_latency_ms=10,
                                                top1_agreement=None,
                                                errors=("the canary failed a sample request: "
                                                        "500",)))
    assert result.outcome == FAIL
    assert result.failures == ("the canary failed a sample request: 500",)


def test_a_restarted_pod_counts_its_new_requests_not_a_negative_window():
    from shipyard.kube.metrics import per_pod_window

    before = {"pod-a": parse_scrape(SCRAPE.format(ok=1000, bad=0, fast=1000, slow=1000), "m")}
    after = {"pod-a": parse_scrape(SCRAPE.format(ok=5, bad=40, fast=45, slow=45), "m")}
    error_rate, _, requests = per_pod_window(before, after)
    assert requests == 45
    assert error_rate == pytest.approx(40 / 45)  # a crash-looping canary shows its errors


def test_the_prometheus_error_rate_is_zero_when_nothing_failed():
    from shipyard.kube.observe import prometheus_queries

    query = prometheus_queries("m", 30)["error_rate"]
    assert 'status!="OK"' in query and "or vector(0)" in query
    assert 'pod=~"m-canary-.*"' in query
