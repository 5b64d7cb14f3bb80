"""The rollout's answers to what a real API server and network do (issue 24), in their pure
parts: retry decisions, MicroTime, expiry by observed change, the Lease's deadline, who holds
a Lease, object names, the route's matches and status, REST answers; and the controller's
handling of cluster errors, with fakes of its own interfaces."""

from __future__ import annotations

import datetime as dt

import pytest
from support.rollout_fakes import FakeClock, FakeCluster, RecordingAliases, ScriptedObserver, ports

from shipyard.core.claims import lease_holder, lease_holder_gone
from shipyard.core.errors import ClusterError, LeaseHeldError, ShipyardError, UsageError
from shipyard.core.names import MAX_ROLLOUT_NAME_LENGTH, validate_rollout_name
from shipyard.kube.api import ATTEMPTS, MAX_BACKOFF_S, retry_delay
from shipyard.kube.cluster import route_problems
from shipyard.kube.lease import RENEW_DEADLINE_S, HeldLease, Observed, micro_time
from shipyard.kube.manifests import ServingTarget, route
from shipyard.kube.observe import predictions_of
from shipyard.rollout import controller, machine
from shipyard.rollout.gates import Observation
from shipyard.rollout.policy import parse_policy

POLICY = parse_policy({"steps": [{"weight": 10, "pause_seconds": 60}],
                       "gates": {"max_error_rate": 0.01}, "check_interval_seconds": 30})
GOOD = Observation(error_rate=0.0)


# --- retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("status, attempt, retry_after, expected", [
    (429, 1, "3", 3.0),          # the server's Retry-After, when longer than the backoff
    (429, 3, "1", 4.0),          # the backoff, when longer
    (503, 1, None, 1.0),
    (500, 2, None, 2.0),
    (None, 1, None, 1.0),        # a dropped or hung connection
    (429, 1, "600", MAX_BACKOFF_S),  # bounded
    (429, 1, "soon", 1.0),           # not seconds nor an HTTP date: the backoff
    (503, 2, "Wed, 21 Oct 2015 07:28:00 GMT", 2.0),  # a date in the past
    (503, ATTEMPTS, None, None),     # the last attempt: give up
    (404, 1, None, None), (409, 1, None, None), (422, 1, None, None), (403, 1, None, None),
])
def test_retries_are_for_what_may_pass_and_are_bounded(status, attempt, retry_after, expected):
    assert retry_delay(status, attempt, retry_after) == expected


def test_total_retry_time_is_bounded():
    waits = [retry_delay(503, attempt, None) for attempt in range(1, ATTEMPTS)]
    assert sum(waits) <= 4 * MAX_BACKOFF_S


# --- the Lease -----------------------------------------------------------------------------------

def test_micro_time_always_has_six_fractional_digits():
    whole_second = dt.datetime(2026, 12, 5, 9, 0, 0, 0, tzinfo=dt.UTC)
    assert micro_time(whole_second) == "2026-12-05T09:00:00.000000Z"
    assert whole_second.isoformat() == "2026-12-05T09:00:00+00:00"  # what the client sends
    assert micro_time(whole_second.replace(microsecond=7)) == "2026-12-05T09:00:00.000007Z"


def test_expiry_counts_from_the_last_observed_change_on_our_clock():
    observed = Observed()
    record = ("a@h:1", "2026-12-05 09:00:00+00:00", "41")
    assert observed.unchanged_for(record, 100.0) == 0.0
    assert observed.unchanged_for(record, 130.0) == 30.0
    renewed = ("a@h:1", "2026-12-05 09:00:20+00:00", "42")
    assert observed.unchanged_for(renewed, 140.0) == 0.0  # renewed: the wait starts again
    assert observed.unchanged_for(renewed, 201.0) == 61.0


def test_a_lease_not_renewed_within_the_deadline_stops_its_holder_before_it_expires():
    clock = FakeClock()
    held = HeldLease("shipyard-rollout-churn", clock)
    clock.sleep(RENEW_DEADLINE_S - 1)
    held.check()
    clock.sleep(2)
    with pytest.raises(LeaseHeldError, match=r"could not renew the Lease shipyard-rollout-churn "
                                             r"for 41 s \(the deadline is 40 s of its 60 s\)"):
        held.check()
    held.renewed(clock())  # too late: a loss stays a loss
    with pytest.raises(LeaseHeldError, match="could not renew"):
        held.check()


def test_a_killed_holder_on_this_host_is_known_gone_and_one_elsewhere_is_not():
    here = "host-a/boot-1/4026531836"
    identity = lease_holder("ana", "host-a", 4242, 777, here)
    assert identity.startswith("ana@host-a:4242 (started 777, ns ")
    assert lease_holder_gone(identity, here, lambda pid: None)  # no such process
    assert lease_holder_gone(identity, here, lambda pid: 999)  # the pid is another process
    assert not lease_holder_gone(identity, here, lambda pid: 777)  # alive
    assert not lease_holder_gone(identity, "host-b/boot-2/1", lambda pid: None)
    assert not lease_holder_gone("someone@else:12", here, lambda pid: None)  # not ours


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["1churn", "c" * (MAX_ROLLOUT_NAME_LENGTH + 1)])
def test_names_that_cannot_make_the_rollouts_objects_are_refused_naming_the_limit(name):
    with pytest.raises(UsageError, match=r"name: .* cannot be rolled out on Kubernetes: .*"
                                         r"DNS-1035 label .* at most 56 characters"):
        validate_rollout_name(name)


def test_a_name_at_the_limit_is_accepted():
    name = "c" * MAX_ROLLOUT_NAME_LENGTH
    assert validate_rollout_name(name) == name
    assert len(f"{name}-canary") == 63


# --- the route -----------------------------------------------------------------------------------

def test_the_route_matches_only_its_models_rest_paths_and_its_hostnames():
    routed = route(ServingTarget(name="churn", canary_version=2, canary_weight=10,
                                 hostnames=("churn.ml.example.com",)))
    assert routed["spec"]["hostnames"] == ["churn.ml.example.com"]
    rule = routed["spec"]["rules"][0]
    assert rule["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/v1/models/churn"}},
        {"path": {"type": "Exact", "value": "/v1/models/churn:predict"}},
        {"path": {"type": "Exact", "value": "/v1/models/churn:classify"}},
        {"path": {"type": "Exact", "value": "/v1/models/churn:regress"}}]
    assert [b["weight"] for b in rule["backendRefs"]] == [90, 10]
    assert "hostnames" not in route(ServingTarget(name="churn"))["spec"]


def _route_status(generation, *conditions, gateway="shipyard-gateway"):
    return {"metadata": {"generation": generation},
            "status": {"parents": [{"parentRef": {"name": gateway}, "conditions": [
                {"type": t, "status": s, "reason": r, "message": "m",
                 "observedGeneration": g} for t, s, r, g in conditions]}]}}


def test_route_status_is_read_for_the_current_generation():
    accepted = _route_status(3, ("Accepted", "True", "Accepted", 3),
                             ("ResolvedRefs", "True", "ResolvedRefs", 3))
    assert route_problems(accepted, ["shipyard-gateway"]) == []
    stale = _route_status(4, ("Accepted", "True", "Accepted", 3),
                          ("ResolvedRefs", "True", "ResolvedRefs", 3))
    assert route_problems(stale, ["shipyard-gateway"]) == [
        "Gateway shipyard-gateway has not yet reported Accepted for generation 4",
        "Gateway shipyard-gateway has not yet reported ResolvedRefs for generation 4"]
    assert route_problems({"metadata": {"generation": 1}}, ["shipyard-gateway"]) == [
        "not yet accepted by Gateway shipyard-gateway (no status from it)"]
    pending = _route_status(2, ("Accepted", "Unknown", "Pending", 2),
                            ("ResolvedRefs", "True", "ResolvedRefs", 2))
    assert route_problems(pending, ["shipyard-gateway"]) == [
        "Gateway shipyard-gateway reports Accepted Unknown (Pending)"]  # waited for
    unresolved = _route_status(2, ("Accepted", "True", "Accepted", 2),
                               ("ResolvedRefs", "False", "BackendNotFound", 2))
    assert route_problems(unresolved, ["shipyard-gateway"]) == [
        "refused by Gateway shipyard-gateway: ResolvedRefs is False (BackendNotFound: m)"]


# --- REST answers --------------------------------------------------------------------------------

def test_predictions_are_read_from_row_and_columnar_answers():
    assert predictions_of({"predictions": [[0.1, 0.9]]}) == [[0.1, 0.9]]
    assert predictions_of({"outputs": [[0.1, 0.9], [0.8, 0.2]]}) == [[0.1, 0.9], [0.8, 0.2]]
    assert predictions_of({"outputs": {"b": [1, 2], "a": [[3], [4]]}}) == [
        {"a": [3], "b": 1}, {"a": [4], "b": 2}]
    with pytest.raises(ValueError, match="neither 'predictions' nor 'outputs': boom"):
        predictions_of({"error": "boom"})


# --- the controller --------------------------------------------------------------------------------

class FailingCluster(FakeCluster):
    """FakeCluster whose named calls raise the given error (each time, or `times` times)."""

    def __init__(self, errors: dict[str, ShipyardError], times: int = 10**6, **kwargs):
        super().__init__(**kwargs)
        self.errors, self.times = errors, dict.fromkeys(errors, times)

    def _fail(self, call: str) -> None:
        if call in self.errors and self.times[call] > 0:
            self.times[call] -= 1
            raise self.errors[call]

    def load_request(self, name):
        self._fail("load_request")
        return super().load_request(name)

    def set_weight(self, name, weight):
        self._fail(f"set_weight {weight}")
        super().set_weight(name, weight)

    def save_state(self, name, state):
        self._fail("save_state")
        super().save_state(name, state)

    def deploy_canary(self, name, version):
        self._fail("deploy_canary")
        super().deploy_canary(name, version)


def test_an_api_failure_while_checking_rolls_the_canary_back():
    cluster = FailingCluster({"load_request": ClusterError("Kubernetes API: read ConfigMap "
                                                           "failed after 5 attempts: HTTP 503")})
    state = controller.start(ports(cluster, ScriptedObserver([GOOD]), RecordingAliases()),
                             "churn", 2, POLICY, holder="a")
    assert state.phase == machine.ROLLED_BACK
    assert "check failed: Kubernetes API: read ConfigMap failed after 5 attempts" in state.reason
    assert cluster.weight == 0 and cluster.canary is None


def test_a_lost_lease_during_an_action_stops_the_controller_without_acting():
    cluster = FailingCluster({"deploy_canary": LeaseHeldError("lost the Lease to b")})
    with pytest.raises(LeaseHeldError, match="lost the Lease to b"):
        controller.start(ports(cluster, ScriptedObserver([GOOD]), RecordingAliases()),
                         "churn", 2, POLICY, holder="a")
    assert ("set_weight", 0) not in cluster.calls  # no rollback by a controller that lost it
    assert cluster.states["churn"]["pending"][0]["kind"] == "deploy_canary"


def test_a_failing_rollback_says_what_is_left_and_the_same_command_finishes_it():
    refused = ClusterError("Kubernetes API: apply HTTPRoute ml/churn failed: HTTP 422")
    cluster = FailingCluster({"deploy_canary": ClusterError("Deployment stuck"),
                              "set_weight 0": refused}, times=1)
    aliases = RecordingAliases()
    with pytest.raises(ShipyardError, match=r"churn: set the canary's weight to 0% failed "
                                            r"while the rollout was ending rolled_back .*"
                                            r"Left to do: set the canary's weight to 0%; route "
                                            r"all traffic to stable and delete the canary's "
                                            r"objects; clear alias canary\. .* run `shipyard "
                                            r"rollout abort --name churn`"):
        controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "churn", 2,
                         POLICY, holder="a")
    stored = cluster.states["churn"]
    assert stored["phase"] == machine.ROLLED_BACK and len(stored["pending"]) == 3
    state = controller.start(ports(cluster, ScriptedObserver([GOOD]), aliases), "churn", 2,
                             POLICY, holder="a")  # the same command again
    assert state.terminal and state.phase == machine.ROLLED_BACK
    assert cluster.weight == 0 and aliases.canary is None


def test_a_state_that_cannot_be_saved_says_the_same_command_resumes():
    cluster = FailingCluster({"save_state": ClusterError("Kubernetes API: save failed: HTTP "
                                                         "500")})
    with pytest.raises(ClusterError, match=r"save failed: HTTP 500\. This state was not saved "
                                           r"\(phase progressing, pending: point alias canary "
                                           r"at version 2; .*\); the cluster keeps the last one "
                                           r"saved before it, if any: run the same command "
                                           r"again"):
        controller.start(ports(cluster, ScriptedObserver([GOOD]), RecordingAliases()),
                         "churn", 2, POLICY, holder="a")
