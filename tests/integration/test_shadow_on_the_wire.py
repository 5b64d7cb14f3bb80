"""The shadow step on the wire: KubeCluster.set_mirror through the real `kubernetes` client
against the API double (support/kube_api_double.py), whose HTTPRoute CRD is the Gateway API's
v1.3.0 (or v1.2.1, which prunes RequestMirror's `percent`); and what the observer measures of
the canary's requests."""

from __future__ import annotations

import pytest
from support.kube_api_double import KubeApiDouble
from support.rollout_fakes import FakeClock, RecordingAliases

from shipyard.core.errors import ClusterError, UsageError
from shipyard.kube.cluster import KubeCluster, with_default_timeout
from shipyard.kube.manifests import REST_PORT, ServingTarget, render
from shipyard.kube.observe import ClusterObserver
from shipyard.rollout import controller, machine
from shipyard.rollout.controller import Ports
from shipyard.rollout.gates import Observation
from shipyard.rollout.policy import parse_policy

NS = "shipyard"
ROUTE = rf"/namespaces/{NS}/httproutes/m$"


@pytest.fixture
def clock():
    return FakeClock()


def cluster(double, clock, **target):
    api = with_default_timeout(double.api_client(retries=False))  # as connect() makes it
    return KubeCluster(api, ServingTarget(name="m", namespace=NS, **target),
                       rollout_timeout_s=30, canary_grace_s=0, sleep=clock.sleep, clock=clock)


@pytest.fixture
def double():
    with KubeApiDouble(namespace=NS) as server:
        yield server


@pytest.fixture
def kube(double, clock):
    made = cluster(double, clock)
    yield made
    made.api.close()


def with_canary(kube):
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1)))
    kube.deploy_canary("m", 2)


def rule(double):
    return double.get("HTTPRoute", "m")["spec"]["rules"][0]


def weights(double):
    return {ref["name"]: ref["weight"] for ref in rule(double)["backendRefs"]}


def mirror(double):
    filters = rule(double).get("filters") or []
    assert all(f["type"] == "RequestMirror" for f in filters)
    return filters[0]["requestMirror"] if filters else None


def test_set_mirror_copies_a_share_to_the_canary_at_weight_0_and_0_removes_it(double, kube):
    with_canary(kube)
    double.clear_requests()
    kube.set_mirror("m", 20)
    assert mirror(double) == {"backendRef": {"group": "", "kind": "Service",
                                             "name": "m-canary", "port": REST_PORT},
                              "percent": 20}
    assert weights(double) == {"m": 100, "m-canary": 0}
    # Applied once, then gated on the route's status like any weight change.
    assert [r.method for r in double.requests_matching(path=ROUTE)] == ["PATCH", "GET"]
    kube.set_mirror("m", 0)
    assert mirror(double) is None and weights(double) == {"m": 100, "m-canary": 0}
    assert "filters" not in rule(double)


def test_a_weight_or_the_canarys_removal_ends_the_mirror(double, kube):
    with_canary(kube)
    kube.set_mirror("m", 50)
    kube.set_weight("m", 10)
    assert mirror(double) is None and weights(double) == {"m": 90, "m-canary": 10}
    kube.set_mirror("m", 100)
    assert mirror(double)["percent"] == 100 and weights(double) == {"m": 100, "m-canary": 0}
    kube.remove_canary("m")
    assert mirror(double) is None and weights(double) == {"m": 100}
    assert double.get("Service", "m-canary") is None


def test_a_mirror_to_a_canary_service_that_does_not_exist_is_refused(double, kube):
    """ResolvedRefs covers the mirror's backendRef too (HTTPRequestMirrorFilter.BackendRef)."""
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1)))
    with pytest.raises(ClusterError, match=r"HTTPRoute shipyard/m: refused by Gateway "
                                           r"shipyard-gateway: ResolvedRefs is False "
                                           r"\(BackendNotFound: .*no weight was moved"):
        kube.set_mirror("m", 20)


def test_a_gateway_that_refuses_the_mirror_filter_fails_the_step(double, kube):
    """RequestMirror is "Support: Extended": a Gateway without it does not accept the route."""
    with_canary(kube)
    double.gateway_controller = False  # it reconciles the new generation at the first poll:
    kube.sleep = lambda seconds: double.set_route_status(
        "m", accepted=False, reason="UnsupportedValue",
        message="RequestMirror filter is not supported")
    with pytest.raises(ClusterError, match=r"refused by Gateway shipyard-gateway: Accepted is "
                                           r"False \(UnsupportedValue: RequestMirror filter is "
                                           r"not supported\)"):
        kube.set_mirror("m", 20)


def test_a_percent_for_gateway_api_v1_2_is_refused_before_any_call(double, clock):
    kube = cluster(double, clock, gateway_api_version="v1.2.1")
    with_canary(kube)
    double.clear_requests()
    with pytest.raises(UsageError, match=r"serving.gateway_api_version is v1.2.1: .* only from "
                                         r"v1.3.0 on, so mirror: 30 cannot be rendered"):
        kube.set_mirror("m", 30)
    assert double.requests_matching(path=ROUTE) == []
    kube.set_mirror("m", 100)  # the whole traffic needs no percent: none is sent
    assert mirror(double) == {"backendRef": {"group": "", "kind": "Service",
                                             "name": "m-canary", "port": REST_PORT}}
    kube.api.close()


def test_a_v1_2_1_crd_that_prunes_percent_gets_no_mirror_and_a_cluster_error(clock):
    """The policy says v1.3.0 but the cluster's CRD is v1.2.1: the API server drops `percent`
    (with a warning), and the Gateway would mirror every request."""
    with KubeApiDouble(namespace=NS, gateway_api_release="v1.2.1") as double:
        kube = cluster(double, clock)
        with_canary(kube)
        with pytest.raises(ClusterError, match=r"HTTPRoute shipyard/m: the API server dropped "
                                               r"RequestMirror's percent \(20\): its HTTPRoute "
                                               r"CRD is older than Gateway API v1.3.0, .* would "
                                               r"mirror every request; the mirror was taken off "
                                               r"again\. Install the Gateway API v1.3.0 CRDs"):
            kube.set_mirror("m", 20)
        assert mirror(double) is None and weights(double) == {"m": 100, "m-canary": 0}
        kube.set_mirror("m", 100)  # nothing to prune: a full mirror stands
        assert mirror(double) == {"backendRef": {"group": "", "kind": "Service",
                                                 "name": "m-canary", "port": REST_PORT}}
        kube.api.close()


# --- the controller with a mirror step -----------------------------------------------------


class RouteRecorder:
    """An observer that notes the route at each check, and reports `observation`."""

    def __init__(self, double, observation):
        self.double, self.observation, self.seen = double, observation, []

    def observe(self, name, state):
        self.seen.append((state.mirror, mirror(self.double), weights(self.double)))
        return self.observation


def test_a_rollout_mirrors_then_weighs_then_promotes_with_the_route_to_match(double, kube,
                                                                              clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1)))
    policy = parse_policy({"steps": [{"mirror": 20, "pause_seconds": 0},
                                     {"weight": 50, "pause_seconds": 0}],
                           "gates": {"max_error_rate": 0.01, "min_requests": 10},
                           "check_interval_seconds": 1})
    recorder = RouteRecorder(double, Observation(error_rate=0.0, requests=500))
    state = controller.start(Ports(kube, recorder, RecordingAliases(), clock=clock,
                                   sleep=clock.sleep), "m", 2, policy, holder="a")
    assert state.phase == machine.PROMOTED
    mirrored = [seen for seen in recorder.seen if seen[0]]
    weighted = [seen for seen in recorder.seen if not seen[0]]
    assert mirrored and weighted
    assert all(m["percent"] == 20 and w == {"m": 100, "m-canary": 0}
               for _, m, w in mirrored)
    assert all(m is None and w == {"m": 50, "m-canary": 50} for _, m, w in weighted)
    assert mirror(double) is None and weights(double) == {"m": 100}


def test_a_rollback_during_the_shadow_step_takes_the_mirror_off(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS, stable_version=1)))
    policy = parse_policy({"steps": [{"mirror": 20, "pause_seconds": 0},
                                     {"weight": 50, "pause_seconds": 0}],
                           "gates": {"max_error_rate": 0.01}, "check_interval_seconds": 1})
    recorder = RouteRecorder(double, Observation(error_rate=0.5, requests=500))
    state = controller.start(Ports(kube, recorder, RecordingAliases(), clock=clock,
                                   sleep=clock.sleep), "m", 2, policy, holder="a")
    assert state.phase == machine.ROLLED_BACK
    assert [m["percent"] for _, m, _ in recorder.seen] == [20]
    assert mirror(double) is None and weights(double) == {"m": 100}
    assert double.get("Deployment", "m-canary") is None


# --- what the observer measures of the canary under mirroring ------------------------------


def metrics_text(ok, errors, probes):
    """A canary pod's metrics as TF Serving writes them: requests by status, latency of the
    OK ones by API (REST GETs of model status, the readiness probes, have API "")."""
    return "\n".join([
        "# TYPE :tensorflow:serving:request_count counter",
        f':tensorflow:serving:request_count{{model_name="m",status="OK"}} {ok + probes}',
        f':tensorflow:serving:request_count{{model_name="m",status="INVALID_ARGUMENT"}} {errors}',
        "# TYPE :tensorflow:serving:request_latency histogram",
        *(f':tensorflow:serving:request_latency_bucket{{model_name="m",API="{api}",'
          f'entrypoint="REST",le="{le}"}} {n}'
          for api, n in (("predict", ok), ("", probes)) for le in ("10000", "+Inf")),
        ':tensorflow:serving:request_latency_sum{model_name="m",API="predict",'
        'entrypoint="REST"} 1',
        f':tensorflow:serving:request_latency_count{{model_name="m",API="predict",'
        f'entrypoint="REST"}} {ok}',
        ':tensorflow:serving:request_latency_sum{model_name="m",API="",entrypoint="REST"} 1',
        f':tensorflow:serving:request_latency_count{{model_name="m",API="",entrypoint="REST"}} '
        f"{probes}", ""])


def test_the_observer_counts_the_mirrored_requests_the_canary_served_not_its_probes(
        double, kube, clock):
    with_canary(kube)
    kube.set_mirror("m", 20)
    scrapes = iter([metrics_text(100, 0, 10), metrics_text(280, 20, 16)])
    double.serve_pods(r"m-canary-.*", 8501, lambda request: next(scrapes))
    policy = parse_policy({"steps": [{"mirror": 20}], "gates": {"max_error_rate": 0.01,
                                                               "min_requests": 100}})
    seen = ClusterObserver(kube.api, NS, policy, sleep=clock.sleep).observe("m", None)
    assert seen.requests == 200  # 180 answered OK and 20 failed; the 6 probes are not
    assert seen.error_rate == pytest.approx(20 / 206)  # the error rate is as it was
    assert seen.p99_latency_ms == 10.0
