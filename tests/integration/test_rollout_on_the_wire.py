"""The rollout against the wire-level API double (support/kube_api_double.py) with the real
`kubernetes` client: the faults a real API server and network give (issue 24), met by
kube.api's retries, the Lease and the controller's rollback, with KubeCluster as `shipyard
rollout` makes it (urllib3's retries off, kube.cluster.configured)."""

from __future__ import annotations

import json

import pytest
from support.kube_api_double import KubeApiDouble
from support.rollout_fakes import FakeClock, RecordingAliases, ScriptedObserver

from shipyard.core.claims import lease_holder
from shipyard.core.errors import ClusterError, LeaseHeldError, ShipyardError
from shipyard.kube import api as kube_api
from shipyard.kube.cluster import KubeCluster, with_default_timeout
from shipyard.kube.lease import LEASE_SECONDS, RENEW_DEADLINE_S
from shipyard.kube.manifests import ServingTarget, render
from shipyard.kube.observe import ClusterObserver
from shipyard.rollout import controller, machine
from shipyard.rollout.controller import Ports
from shipyard.rollout.gates import Observation
from shipyard.rollout.policy import parse_policy
from shipyard.steps.rollout import holder_is_dead

NS = "shipyard"
ROUTE = rf"/namespaces/{NS}/httproutes/m$"
GOOD = Observation(error_rate=0.0)
POLICY = parse_policy({"steps": [{"weight": 10, "pause_seconds": 0},
                                 {"weight": 50, "pause_seconds": 0}],
                       "gates": {"max_error_rate": 0.01}, "check_interval_seconds": 1})


@pytest.fixture
def double():
    with KubeApiDouble(namespace=NS) as server:
        yield server


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def kube(double, clock):
    api = with_default_timeout(double.api_client(retries=False))  # as connect() makes it
    cluster = KubeCluster(api, ServingTarget(name="m", namespace=NS), rollout_timeout_s=30,
                          canary_grace_s=5, sleep=clock.sleep, clock=clock,
                          holder_is_dead=holder_is_dead)
    yield cluster
    api.close()


def stable_serves(kube):
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1)))


def weights(double):
    refs = double.get("HTTPRoute", "m")["spec"]["rules"][0]["backendRefs"]
    return {ref["name"]: ref.get("weight") for ref in refs}


# --- kube.api's retries, through the real client ----------------------------------------------

def test_429s_and_5xx_are_retried_with_backoff_honouring_retry_after(double, kube, clock):
    stable_serves(kube)
    double.inject(r"/deployments/m$", method="GET", status=429, retry_after=3, times=1)
    double.inject(r"/deployments/m$", method="GET", status=503, times=1)
    assert kube.stable_version("m") == 1
    assert [r.answer for r in double.requests_matching("GET", r"/deployments/m$")] == [
        429, 503, 200]
    assert clock.now == 1_000_000.0 + 3 + 2  # Retry-After 3 s, then the second backoff


def test_a_dropped_apply_is_retried_and_a_persistent_500_names_the_call(double, kube):
    double.inject(r"/configmaps/m-config-v1$", method="PATCH", action="drop", times=1)
    stable_serves(kube)
    assert double.get("ConfigMap", "m-config-v1") is not None
    double.inject(r"/services/m$", method="PATCH", status=500, message="etcdserver: timeout")
    with pytest.raises(ClusterError, match=r"Kubernetes API: apply Service shipyard/m "
                                           r"\(server-side apply\) failed after 5 attempts: "
                                           r"HTTP 500 .*etcdserver: timeout; the API server is "
                                           r"overloaded or failing; running the same command "
                                           r"again resumes"):
        stable_serves(kube)


def test_a_hung_call_times_out_and_is_retried(double, kube, monkeypatch):
    monkeypatch.setattr(kube_api, "REQUEST_TIMEOUT", (2.0, 0.3))
    double.inject(r"/configmaps/shipyard-rollout-m$", method="GET", action="hang", hang_s=1,
                  times=1)
    assert kube.load_state("m") is None
    assert [r.answer for r in double.requests_matching(
        "GET", r"/configmaps/shipyard-rollout-m$")] == ["hung", 404]


def test_a_forbidden_call_is_not_retried_and_names_the_role(double, kube):
    double.inject(r"/deployments/m$", method="GET", status=403,
                  message='deployments.apps "m" is forbidden: User "x" cannot get resource')
    with pytest.raises(ClusterError, match=r"read Deployment shipyard/m failed: HTTP 403 .* "
                                           r"is forbidden.*apply the Role of k8s/"):
        kube.stable_version("m")
    assert len(double.requests_matching("GET", r"/deployments/m$")) == 1


# --- the Lease --------------------------------------------------------------------------------

def seed_lease(double, holder, renew="2030-01-01T00:00:00.000000Z"):
    """A Lease renewed "in the future": its holder's clock is ahead of ours."""
    double.seed({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "shipyard-rollout-m", "namespace": NS},
                 "spec": {"holderIdentity": holder, "leaseDurationSeconds": LEASE_SECONDS,
                          "renewTime": renew, "acquireTime": renew}})


def test_a_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration(double, kube, clock):
    seed_lease(double, "b@other-host:7 (started 1, ns 000000000000)")
    with pytest.raises(LeaseHeldError, match=r"held by b@other-host:7"):
        with kube.lease("m", "a", wait_s=LEASE_SECONDS - 5):
            pass
    started = clock.now
    with kube.lease("m", "a", wait_s=LEASE_SECONDS + 10):
        assert double.get("Lease", "shipyard-rollout-m")["spec"]["holderIdentity"] == "a"
    assert LEASE_SECONDS <= clock.now - started < LEASE_SECONDS + 10


def test_a_killed_holder_on_this_host_is_taken_over_at_once(double, kube, clock):
    from shipyard.steps import versions

    gone = 2**22 + 12345  # beyond pid_max here: no such process
    seed_lease(double, lease_holder("ana", "h", gone, 5, versions._namespace()))
    with kube.lease("m", "a", wait_s=0):
        lease = double.get("Lease", "shipyard-rollout-m")["spec"]
        assert lease["holderIdentity"] == "a" and lease["leaseTransitions"] == 1
    assert clock.now == 1_000_000.0  # not waited for


def test_a_holder_that_cannot_renew_stops_before_its_lease_expires(double, kube, clock):
    kube.leases.retry_period_s = 0.02
    with kube.lease("m", "a", wait_s=0) as held:
        kube.save_state("m", {"phase": "progressing"})
        double.inject(r"/leases/shipyard-rollout-m$", method="PUT", status=503)
        clock.sleep(RENEW_DEADLINE_S + 1)  # over 40 s without a renewal
        with pytest.raises(LeaseHeldError, match=r"could not renew the Lease "
                                                 r"shipyard-rollout-m for \d+ s \(the deadline "
                                                 r"is 40 s of its 60 s\)"):
            kube.save_state("m", {"phase": "stale"})
        assert held.lost.is_set()
    assert json.loads(double.get("ConfigMap", "shipyard-rollout-m")["data"]["state.json"]) == {
        "phase": "progressing"}


def test_a_lease_taken_by_another_controller_is_noticed_by_the_renewer(double, kube):
    kube.leases.retry_period_s = 0.02
    with kube.lease("m", "a", wait_s=0) as held:
        lease = double.get("Lease", "shipyard-rollout-m")
        lease["spec"]["holderIdentity"] = "b"
        from kubernetes import client

        client.CoordinationV1Api(kube.api).replace_namespaced_lease("shipyard-rollout-m", NS,
                                                                    lease)
        assert held.lost.wait(5)
        with pytest.raises(LeaseHeldError, match="lost the Lease shipyard/shipyard-rollout-m "
                                                 "to b"):
            held.check()


# --- the controller on the wire ---------------------------------------------------------------

def rollout_ports(kube, clock, observer, aliases):
    return Ports(kube, observer, aliases, clock=clock, sleep=clock.sleep)


def test_an_api_failure_mid_rollout_rolls_back_through_the_real_client(double, kube, clock):
    stable_serves(kube)
    aliases = RecordingAliases()
    # At the first check (which moves to the next step), the route's next apply fails all of
    # kube.api's attempts.
    observer = ScriptedObserver([GOOD], hooks={0: lambda: double.inject(
        ROUTE, method="PATCH", status=500, times=kube_api.ATTEMPTS)})
    state = controller.start(rollout_ports(kube, clock, observer, aliases), "m", 2, POLICY,
                             holder="a")
    assert state.phase == machine.ROLLED_BACK
    assert state.reason.startswith("set_weight failed: Kubernetes API: apply HTTPRoute "
                                   "shipyard/m (server-side apply) failed after 5 attempts: "
                                   "HTTP 500")
    assert weights(double) == {"m": 100}
    assert double.get("Deployment", "m-canary") is None
    assert double.get("Service", "m-canary") is None
    assert aliases.canary is None and aliases.champion_version == 1


def test_an_abort_while_the_route_is_refused_keeps_the_canary_and_a_rerun_finishes(
        double, kube, clock):
    stable_serves(kube)
    aliases = RecordingAliases()

    def refuse_routes_and_abort():
        double.inject(ROUTE, method="PATCH", status=422, message="admission webhook denied")
        kube.save_request("m", {"rollout_id": kube.load_state("m")["rollout_id"],
                                "what": "abort", "reason": "bad canary"})

    observer = ScriptedObserver([GOOD], hooks={0: refuse_routes_and_abort})
    with pytest.raises(ShipyardError, match=r"m: set the canary's weight to 0% failed while the "
                                            r"rollout was ending aborted .*admission webhook "
                                            r"denied.* Left to do: set the canary's weight to "
                                            r"0%; route all traffic to stable and delete the "
                                            r"canary's objects; clear alias canary"):
        controller.start(rollout_ports(kube, clock, observer, aliases), "m", 2, POLICY,
                         holder="a")
    assert weights(double) == {"m": 90, "m-canary": 10}  # unchanged, and still served:
    assert double.get("Deployment", "m-canary") is not None
    assert double.get("Service", "m-canary") is not None
    double.clear_faults()
    state = controller.request(rollout_ports(kube, clock, ScriptedObserver([GOOD]), aliases),
                               "m", "abort", "bad canary", holder="a")
    assert state.terminal and state.phase == machine.ABORTED
    assert weights(double) == {"m": 100}
    assert double.get("Deployment", "m-canary") is None


def test_without_the_httproute_kind_an_abort_still_removes_the_canary(double, kube, clock):
    stable_serves(kube)
    kube.deploy_canary("m", 2)
    double.set_httproute_crd(False)
    again = KubeCluster(kube.api, kube.target, canary_grace_s=0, sleep=clock.sleep,
                        clock=clock)  # the next command, which reads discovery again
    again.remove_canary("m")
    for kind, name in (("Deployment", "m-canary"), ("Service", "m-canary"),
                       ("ConfigMap", "m-canary-config-v2")):
        assert double.get(kind, name) is None, (kind, name)


def test_the_canary_outlives_its_last_weight_change_by_the_grace_period(double, kube, clock):
    stable_serves(kube)
    kube.deploy_canary("m", 2)
    sleeps = []  # (how many requests the API had seen, seconds) at each of kube's sleeps

    def sleep(seconds):
        sleeps.append((len(double.requests), seconds))
        clock.sleep(seconds)

    kube.sleep = sleep
    kube.remove_canary("m")
    log = double.requests
    last_route_change = max(i for i, r in enumerate(log)
                            if r.method == "PATCH" and r.path.endswith("/httproutes/m"))
    first_delete = min(i for i, r in enumerate(log) if r.method == "DELETE")
    assert log[first_delete].path.endswith("/deployments/m-canary")
    grace = [seconds for seen, seconds in sleeps
             if last_route_change < seen <= first_delete]
    assert sum(grace) == pytest.approx(5)  # the whole grace, between the two


def test_a_state_save_after_another_writer_is_refused_and_writes_nothing(double, kube):
    with kube.lease("m", "a", wait_s=0):
        kube.save_state("m", {"phase": "mine"})
        from kubernetes import client

        theirs = double.get("ConfigMap", "shipyard-rollout-m")
        theirs["data"] = {"state.json": '{"phase": "theirs"}'}
        client.CoreV1Api(kube.api).replace_namespaced_config_map("shipyard-rollout-m", NS,
                                                                 theirs)
        with pytest.raises(LeaseHeldError, match="changed by another controller"):
            kube.save_state("m", {"phase": "mine again"})
    assert json.loads(double.get("ConfigMap", "shipyard-rollout-m")["data"]["state.json"]) == {
        "phase": "theirs"}


def test_the_deployment_wait_checks_the_lease_on_every_poll(double, kube, clock):
    stable_serves(kube)
    double.deployment_behaviour("m", None)  # never ready
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=2)))
    with kube.lease("m", "a", wait_s=0) as held:
        held.lose("lost the Lease to b")
        with pytest.raises(LeaseHeldError, match="lost the Lease to b"):
            kube.wait_for_deployment("m")
    assert clock.now == 1_000_000.0  # stopped at the first poll


def test_a_call_without_its_own_timeout_gets_the_pools(double, kube, monkeypatch):
    """Discovery takes no `_request_timeout`: kube.api's default bounds it."""
    monkeypatch.setattr(kube_api, "REQUEST_TIMEOUT", (2.0, 0.3))
    double.inject(r"^/apis$", method="GET", action="hang", hang_s=2, times=1)
    with pytest.raises(ClusterError, match=r"read the API's discovery documents failed: "
                                           r".*Read timed out"):
        assert kube.dynamic is None


def test_pod_metrics_the_control_plane_cannot_reach_are_no_data_and_the_log_says_why(
        double, kube, clock, caplog):
    stable_serves(kube)
    kube.deploy_canary("m", 2)
    double.serve_pods(r"m-canary-.*", 8501, lambda request: (
        503, "error trying to reach service: dial tcp 10.8.0.12:8501: i/o timeout"))
    policy = parse_policy({"steps": [{"weight": 10}], "gates": {"max_error_rate": 0.01}})
    observation = ClusterObserver(kube.api, NS, policy, sleep=clock.sleep).observe("m", None)
    assert (observation.error_rate, observation.p99_latency_ms) == (None, None)
    assert "i/o timeout" in caplog.text
    assert ("clusters whose control plane cannot, such as private GKE clusters, give no data "
            "this way: set metrics.prometheus_url in the rollout policy") in caplog.text


def test_a_state_write_whose_answer_was_lost_is_not_taken_for_a_lost_lease(double, kube):
    """The first attempt made the write and its answer was lost: the retry gets 409."""
    assert kube.load_state("m") is None
    double.inject(r"/configmaps$", method="POST", action="lose_answer", times=1)
    kube.save_state("m", {"phase": "progressing", "step": 0})
    double.inject(r"/configmaps/shipyard-rollout-m$", method="PUT", action="lose_answer",
                  times=1)
    kube.save_state("m", {"phase": "progressing", "step": 1})
    answers = [r.answer for r in double.requests if r.method in ("POST", "PUT")]
    assert answers == ["lost", 409, "lost", 409]
    kube.save_state("m", {"phase": "progressing", "step": 2})  # the cached version is right
    assert json.loads(double.get("ConfigMap", "shipyard-rollout-m")["data"]["state.json"]) == {
        "phase": "progressing", "step": 2}


def test_a_first_save_does_not_overwrite_a_state_created_meanwhile(double, kube):
    assert kube.load_state("m") is None
    double.seed({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "shipyard-rollout-m", "namespace": NS},
                 "data": {"state.json": '{"phase": "theirs"}'}})
    with pytest.raises(LeaseHeldError, match="changed by another controller"):
        kube.save_state("m", {"phase": "mine"})
    assert json.loads(double.get("ConfigMap", "shipyard-rollout-m")["data"]["state.json"]) == {
        "phase": "theirs"}


def test_crash_looping_pods_of_an_older_version_do_not_fail_the_wait(double, kube):
    stable_serves(kube)
    labels = {"app.kubernetes.io/instance": "m", "shipyard.dev/track": "stable"}
    old = double.add_pod("m-old-crash", labels, waiting_reason="CrashLoopBackOff",
                         restart_count=4)
    old_pod = double.get("Pod", old["metadata"]["name"])
    assert old_pod is not None
    from kubernetes import client

    old_pod["metadata"]["annotations"] = {"shipyard.dev/version": "2"}  # the failed version's
    client.CoreV1Api(kube.api).replace_namespaced_pod("m-old-crash", NS, old_pod)
    kube.wait_for_deployment("m")  # version 1's pods are ready
    old_pod = double.get("Pod", "m-old-crash")
    old_pod["metadata"]["annotations"] = {"shipyard.dev/version": "1"}
    client.CoreV1Api(kube.api).replace_namespaced_pod("m-old-crash", NS, old_pod)
    double.deployment_behaviour("m", None)
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1, replicas=3)))
    with pytest.raises(ClusterError, match="pod m-old-crash is CrashLoopBackOff"):
        kube.wait_for_deployment("m")
