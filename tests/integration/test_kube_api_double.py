"""The wire-level Kubernetes API double (support/kube_api_double.py) driven by the real
`kubernetes` client 26.1.0, and shipyard's KubeCluster and ClusterObserver through it.

The assertions on the double are the API server's behaviour (messages included, see the
double's docstring for the sources). The tests marked xfail(strict=True) are shipyard faults
that issue 24 listed were strict xfails until the product was fixed; they are plain tests
now, each failing against the code before the fix."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import types

import pytest
import urllib3
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from support.gateway_api_schema import GATEWAY_API_RELEASE, validate_httproute
from support.kube_api_double import KubeApiDouble, parse_micro_time

from shipyard.core.errors import ClusterError, LeaseHeldError, ShipyardError
from shipyard.kube import lease as lease_module
from shipyard.kube.cluster import KubeCluster
from shipyard.kube.manifests import ServingTarget, render, route
from shipyard.kube.observe import ClusterObserver
from shipyard.rollout.policy import Agreement, Gates, RolloutPolicy, Step

NS = "shipyard"


@pytest.fixture
def double():
    with KubeApiDouble(namespace=NS) as server:
        yield server


@pytest.fixture
def api(double):
    api = double.api_client()
    yield api
    api.close()


class FakeClock:
    """monotonic() and sleep() for kube.cluster: the waits cost no time."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def kube(double, clock):
    """KubeCluster as `shipyard rollout` makes it (kube.cluster.configured: urllib3's retries
    off), on the double, with waits that cost no time."""
    shipyard_api = double.api_client(retries=False)
    yield KubeCluster(shipyard_api, ServingTarget(name="m", namespace=NS), rollout_timeout_s=5,
                      canary_grace_s=0, sleep=clock.sleep, clock=clock.monotonic)
    shipyard_api.close()


def said(message):
    """A regex for a Status message as str(ApiException) shows it: inside the repr of the
    body's bytes, where JSON has escaped its quotes."""
    return re.escape(message).replace('"', r'\\*"')


def config_map(name, data, labels=None):
    metadata = {"name": name, "namespace": NS, **({"labels": labels} if labels else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


# ---- discovery ------------------------------------------------------------------------------

def test_discovery_resolves_every_kind_shipyard_applies(api):
    resources = dynamic.DynamicClient(api).resources
    for obj in render(ServingTarget(name="m", namespace=NS, canary_version=2)):
        found = resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        assert (found.group_version, found.kind) == (obj["apiVersion"], obj["kind"])
    leases = resources.get(api_version="coordination.k8s.io/v1", kind="Lease")
    assert leases.namespaced and "update" in leases.verbs


def test_an_absent_httproute_crd_is_the_dynamic_clients_resource_not_found(double, api):
    double.set_httproute_crd(False)
    resources = dynamic.DynamicClient(api).resources
    with pytest.raises(ResourceNotFoundError, match="No matches found.*HTTPRoute"):
        resources.get(api_version="gateway.networking.k8s.io/v1", kind="HTTPRoute")
    with pytest.raises(ApiException, match="could not find the requested resource"):
        api.call_api("/apis/gateway.networking.k8s.io/v1", "GET", _preload_content=False)


# ---- objects, resourceVersion, generation ---------------------------------------------------

def test_create_get_list_delete_and_already_exists(api):
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(NS, config_map("a", {"k": "v"}, {"t": "x"}))
    core.create_namespaced_config_map(NS, config_map("b", {"k": "v"}, {"t": "y"}))
    assert created.metadata.uid and created.metadata.resource_version
    assert core.read_namespaced_config_map("a", NS).data == {"k": "v"}
    listed = core.list_namespaced_config_map(NS, label_selector="t in (x, z)")
    assert [c.metadata.name for c in listed.items] == ["a"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(
        NS, label_selector="t!=x").items] == ["b"]
    with pytest.raises(ApiException, match=said('configmaps "a" already exists')) as err:
        core.create_namespaced_config_map(NS, config_map("a", {}))
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    core.delete_namespaced_config_map("a", NS)
    with pytest.raises(ApiException, match=said('configmaps "a" not found')):
        core.read_namespaced_config_map("a", NS)


def test_a_stale_resource_version_is_409_and_every_write_bumps_it(api):
    core = client.CoreV1Api(api)
    first = core.create_namespaced_config_map(NS, config_map("a", {"k": "1"}))
    first.data = {"k": "2"}
    second = core.replace_namespaced_config_map("a", NS, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "3"}  # still the first resourceVersion
    with pytest.raises(ApiException, match=said('Operation cannot be fulfilled on configmaps '
                                                '"a": the object has been modified')) as err:
        core.replace_namespaced_config_map("a", NS, first)
    assert err.value.status == 409
    second.metadata.resource_version = None  # ConfigMaps allow unconditional updates
    second.data = {"k": "4"}
    assert core.replace_namespaced_config_map("a", NS, second).data == {"k": "4"}


def test_a_lease_or_route_put_without_resource_version_is_422_and_a_lease_put_creates(api):
    leases = client.CoordinationV1Api(api)
    body = client.V1Lease(metadata=client.V1ObjectMeta(name="l"),
                          spec=client.V1LeaseSpec(holder_identity="a"))
    leases.replace_namespaced_lease("l", NS, body)  # AllowCreateOnUpdate: PUT creates a Lease
    body.spec.holder_identity = "b"
    with pytest.raises(ApiException, match=said(
            'leases.coordination.k8s.io "l" is invalid: metadata.resourceVersion: Invalid '
            "value: 0x0: must be specified for an update")):
        leases.replace_namespaced_lease("l", NS, body)
    with pytest.raises(ApiException, match=said('configmaps "nope" not found')):
        client.CoreV1Api(api).replace_namespaced_config_map("nope", NS, config_map("nope", {}))


def test_deployment_generation_follows_the_spec_and_writes_keep_the_status(double, api):
    apps = client.AppsV1Api(api)
    deployment = next(o for o in render(ServingTarget(name="m", namespace=NS))
                      if o["kind"] == "Deployment")
    created = apps.create_namespaced_deployment(NS, deployment)
    assert created.metadata.generation == 1 and created.spec.progress_deadline_seconds == 600
    double.set_deployment_status("m", {"observedGeneration": 1, "replicas": 2})
    current = apps.read_namespaced_deployment("m", NS)
    current.metadata.labels["extra"] = "x"
    current.status.replicas = 99  # a write to the main resource cannot change status
    relabelled = apps.replace_namespaced_deployment("m", NS, current)
    assert (relabelled.metadata.generation, relabelled.status.replicas) == (1, 2)
    relabelled.spec.replicas = 3
    assert apps.replace_namespaced_deployment("m", NS, relabelled).metadata.generation == 2


# ---- server-side apply ----------------------------------------------------------------------

def test_apply_of_rendered_objects_records_the_wire_and_the_field_manager(double, kube):
    target = ServingTarget(name="m", namespace=NS, canary_version=2, canary_weight=10)
    kube.apply(render(target))
    patches = double.requests_matching("PATCH")
    assert len(patches) == len(render(target))
    assert {p.headers["Content-Type"] for p in patches} == {"application/apply-patch+yaml"}
    assert {(p.param("fieldManager"), p.param("force")) for p in patches} == {("shipyard", "True")}
    assert patches[0].body == render(target)[0]
    assert double.managers("Deployment", "m-canary") == {
        ("shipyard", "Apply"): double.managers("Deployment", "m-canary")[("shipyard", "Apply")]}
    assert ".spec.replicas" in double.managers("Deployment", "m")[("shipyard", "Apply")]
    before = double.get("Deployment", "m")["metadata"]["resourceVersion"]
    kube.apply(render(target))  # the same intent again: nothing is written
    assert double.get("Deployment", "m")["metadata"]["resourceVersion"] == before


def test_apply_conflicts_name_the_other_manager_unless_forced(double, api):
    double.seed(config_map("shipyard-rollout-m", {"state.json": "{}"}), manager="kubectl-edit")
    resources = dynamic.DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    mine = config_map("shipyard-rollout-m", {"state.json": '{"phase": "x"}'})
    with pytest.raises(ApiException, match=said('Apply failed with 1 conflict: conflict with '
                                                '"kubectl-edit" using v1 at ')
                       + r"\S+" + said(": .data.state.json")) as err:
        dynamic.DynamicClient(api).server_side_apply(resources, body=mine,
                                                     field_manager="shipyard")
    assert err.value.status == 409
    assert json.loads(err.value.body)["details"]["causes"][0]["type"] == "FieldManagerConflict"
    dynamic.DynamicClient(api).server_side_apply(resources, body=mine, field_manager="shipyard",
                                                 force_conflicts=True)
    assert double.managers("ConfigMap", "shipyard-rollout-m") == {
        ("shipyard", "Apply"): {".data.state.json"}}


def test_an_apply_without_field_manager_is_422(api):
    with pytest.raises(ApiException, match="fieldManager: Required value: is required for apply"):
        api.call_api(f"/api/v1/namespaces/{NS}/configmaps/a", "PATCH",
                     body=config_map("a", {}), _preload_content=False,
                     header_params={"Content-Type": "application/apply-patch+yaml"})


def test_a_state_save_does_not_overwrite_a_state_written_in_between(double, kube):
    kube.save_state("m", {"phase": "mine"})
    theirs = config_map("shipyard-rollout-m", {"state.json": '{"phase": "theirs"}'})
    client.CoreV1Api(kube.api).replace_namespaced_config_map("shipyard-rollout-m", NS, theirs)
    with pytest.raises(LeaseHeldError, match=r"the rollout's state \(shipyard/shipyard-rollout-m\) "
                                             r"was changed by another controller"):
        kube.save_state("m", {"phase": "stale"})
    assert json.loads(double.get("ConfigMap", "shipyard-rollout-m")["data"]["state.json"]) == {
        "phase": "theirs"}


def test_state_and_request_round_trip(kube):
    assert kube.load_state("m") is None
    kube.save_state("m", {"phase": "canary", "step": 1})
    kube.save_request("m", {"action": "abort"})
    assert kube.load_state("m") == {"phase": "canary", "step": 1}
    assert kube.load_request("m") == {"action": "abort"}


# ---- Leases and MicroTime -------------------------------------------------------------------

def test_micro_time_needs_six_fraction_digits_as_gos_parser(api):
    assert parse_micro_time("2026-01-01T00:00:00.000001+01:00") == dt.datetime(
        2025, 12, 31, 23, 0, 0, 1, tzinfo=dt.UTC)
    leases = client.CoordinationV1Api(api)
    whole_second = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # isoformat(): no fraction
    body = client.V1Lease(metadata=client.V1ObjectMeta(name="l"),
                          spec=client.V1LeaseSpec(holder_identity="a", renew_time=whole_second))
    with pytest.raises(ApiException, match=said(
            'Lease in version "v1" cannot be handled as a Lease: parsing time '
            '"2026-01-01T00:00:00+00:00" as "2006-01-02T15:04:05.000000Z07:00": cannot parse '
            '"+00:00" as ".000000"')) as err:
        leases.create_namespaced_lease(NS, body)
    assert err.value.status == 400
    body.spec.renew_time = whole_second.replace(microsecond=5)
    created = leases.create_namespaced_lease(NS, body)
    assert created.spec.renew_time == whole_second.replace(microsecond=5)


def test_lease_acquire_renew_release(double, kube, monkeypatch):
    kube.leases.retry_period_s = 0.05
    with kube.lease("m", "host-a", wait_s=0) as held:
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(
            "shipyard-rollout-m", NS)
        assert lease.spec.holder_identity == "host-a"
        renewed = threading.Event()
        for _ in range(100):
            if len(double.requests_matching("PUT", "/leases/shipyard-rollout-m$")) >= 1:
                renewed.set()
                break
            threading.Event().wait(0.02)
        assert renewed.is_set() and not held.lost.is_set()
        for field in ("acquireTime", "renewTime"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
                                double.get("Lease", "shipyard-rollout-m")["spec"][field])
    released = double.get("Lease", "shipyard-rollout-m")
    assert "holderIdentity" not in released["spec"]
    puts = double.requests_matching("PUT", "/leases/")
    assert puts and all(p.body["metadata"]["resourceVersion"] for p in puts)


def test_a_held_lease_is_refused_naming_the_holder(double, kube):
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    double.seed({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "shipyard-rollout-m", "namespace": NS},
                 "spec": {"holderIdentity": "host-b", "leaseDurationSeconds": 60,
                          "renewTime": now, "acquireTime": now}})
    with pytest.raises(LeaseHeldError, match="held by host-b"):
        with kube.lease("m", "host-a", wait_s=0):
            pass


def test_a_lease_taken_on_a_whole_second_is_acquired(double, kube, monkeypatch):
    whole = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    fake_datetime = types.SimpleNamespace(now=lambda tz=None: whole)
    monkeypatch.setattr(lease_module, "dt", types.SimpleNamespace(
        datetime=fake_datetime, UTC=dt.UTC, timedelta=dt.timedelta))
    with kube.lease("m", "host-a", wait_s=0):
        assert double.get("Lease", "shipyard-rollout-m")["spec"]["renewTime"] == (
            "2026-01-01T12:00:00.000000Z")


# ---- Deployments, the canary, the route -----------------------------------------------------

def test_deploy_canary_waits_for_the_deployment_then_routes(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))  # stable serves
    double.deployment_behaviour("m-canary", ready_after_reads=3)
    kube.deploy_canary("m", 2)
    assert len(double.requests_matching("GET", "/deployments/m-canary$")) >= 3
    canary = double.get("Deployment", "m-canary")
    assert canary["status"]["availableReplicas"] == 1
    assert canary["spec"]["template"]["metadata"]["annotations"]["shipyard.dev/version"] == "2"
    pods = client.CoreV1Api(kube.api).list_namespaced_pod(
        NS, label_selector="app.kubernetes.io/instance=m,shipyard.dev/track=canary")
    assert [p.status.container_statuses[0].ready for p in pods.items] == [True]
    routed = double.get("HTTPRoute", "m")
    assert [b["weight"] for b in routed["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert routed["status"]["parents"][0]["conditions"][1]["reason"] == "ResolvedRefs"
    route_path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/m"
    route_calls = [r.method for r in double.requests if r.path == route_path]
    assert route_calls == ["PATCH", "GET"]  # applied, then its status read


def test_a_route_the_gateway_does_not_resolve_moves_no_weight(double, kube, clock):
    """Without the stable Service, the Gateway reports ResolvedRefs False (BackendNotFound):
    the canary gets no weight, and the error names the condition."""
    with pytest.raises(ClusterError, match=r"HTTPRoute shipyard/m: refused by Gateway "
                                           r"shipyard-gateway: ResolvedRefs is False "
                                           r"\(BackendNotFound: .*\); no weight was moved"):
        kube.deploy_canary("m", 2)


def test_a_route_the_gateway_refuses_moves_no_weight(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS, canary_version=2)))
    generation = double.get("HTTPRoute", "m")["metadata"]["generation"]
    refused = {"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
               "message": "no listener allows routes from namespace shipyard",
               "observedGeneration": generation + 1, "lastTransitionTime": "2026-12-05T09:00:00Z"}
    resolved = dict(refused, type="ResolvedRefs", status="True", reason="ResolvedRefs",
                    message="")
    double.set_route_status("m", parents=[{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                      "name": "shipyard-gateway"},
        "controllerName": "example.com/gateway", "conditions": [refused, resolved]}])
    with pytest.raises(ClusterError, match=r"refused by Gateway shipyard-gateway: Accepted is "
                                           r"False \(NotAllowedByListeners: no listener"):
        kube.set_weight("m", 10)
    assert clock.now == 0  # refused: not waited for


def test_a_route_whose_status_is_not_updated_is_waited_for_then_fails(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS, canary_version=2)))
    double.set_route_status("m")  # accepted for this generation; the controller then stops
    with pytest.raises(ClusterError, match=r"Gateway shipyard-gateway has not yet reported "
                                           r"Accepted for generation 2.* after 120 s; no weight "
                                           r"was moved"):
        kube.set_weight("m", 10)
    assert clock.now > 120


def test_set_weight_and_remove_canary(double, kube):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    kube.deploy_canary("m", 2)
    assert double.get("HTTPRoute", "m")["status"]["parents"][0]["conditions"][1][
        "status"] == "True"  # both Services exist: refs resolve
    kube.set_weight("m", 30)
    assert [b["weight"] for b in double.get("HTTPRoute", "m")["spec"]["rules"][0][
        "backendRefs"]] == [70, 30]
    assert double.get("HTTPRoute", "m")["metadata"]["generation"] == 2
    kube.remove_canary("m")
    assert [b["name"] for b in double.get("HTTPRoute", "m")["spec"]["rules"][0][
        "backendRefs"]] == ["m"]
    for kind, name in (("Deployment", "m-canary"), ("ConfigMap", "m-canary-config-v2")):
        assert double.get(kind, name) is None
    assert double.get("Deployment", "m") is not None
    assert kube.stable_version("m") == 1


def test_a_route_without_matches_is_defaulted_to_a_catch_all(double, api):
    """The CRD's defaults, as the API server applies them: a rule without matches matches
    PathPrefix / (every path on the Gateway); parentRefs get group and kind."""
    bare = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": NS},
            "spec": {"parentRefs": [{"name": "shipyard-gateway"}],
                     "rules": [{"backendRefs": [{"name": "m", "port": 8501}]}]}}
    assert validate_httproute(bare) == [] and GATEWAY_API_RELEASE == "v1.3.0"
    resource = dynamic.DynamicClient(api).resources.get(
        api_version="gateway.networking.k8s.io/v1", kind="HTTPRoute")
    dynamic.DynamicClient(api).server_side_apply(resource, body=bare, field_manager="t")
    stored = double.get("HTTPRoute", "r")
    assert stored["spec"]["rules"][0]["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/"}}]
    assert stored["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1
    assert stored["spec"]["parentRefs"][0] == {"group": "gateway.networking.k8s.io",
                                               "kind": "Gateway", "name": "shipyard-gateway"}
    assert double.managers("HTTPRoute", "r") == {("t", "Apply"): {".spec.parentRefs",
                                                                  ".spec.rules"}}


def test_the_rendered_route_matches_only_its_models_paths(double, kube):
    rendered = route(ServingTarget(name="m", namespace=NS, canary_version=2))
    assert validate_httproute(rendered) == []
    kube.apply([rendered])
    for rule in double.get("HTTPRoute", "m")["spec"]["rules"]:
        assert {"path": {"type": "PathPrefix", "value": "/"}} not in rule["matches"]


def test_an_invalid_route_is_422_with_the_field_path(api):
    bad = route(ServingTarget(name="m", namespace=NS, canary_version=2))
    bad["spec"]["rules"][0]["backendRefs"][1]["weight"] = 1_000_001
    bad["spec"]["parentRefs"][0].pop("name")
    resource = dynamic.DynamicClient(api).resources.get(
        api_version="gateway.networking.k8s.io/v1", kind="HTTPRoute")
    with pytest.raises(ApiException, match=said(
            'HTTPRoute.gateway.networking.k8s.io "m" is invalid: [spec.parentRefs[0].name: '
            "Required value, spec.rules[0].backendRefs[1].weight: Invalid value: 1000001")) as err:
        dynamic.DynamicClient(api).server_side_apply(resource, body=bad, field_manager="t")
    assert err.value.status == 422


def test_route_status_set_by_a_hook(double, kube):
    kube.apply([route(ServingTarget(name="m", namespace=NS, canary_version=2))])
    double.set_route_status("m", accepted=False, reason="NotAllowedByListeners",
                            message="no listener allows routes from namespace shipyard")
    resource = kube.dynamic.resources.get(api_version="gateway.networking.k8s.io/v1",
                                          kind="HTTPRoute")
    status = resource.get(name="m", namespace=NS).status
    conditions = {c.type: (c.status, c.reason) for c in status.parents[0].conditions}
    assert conditions == {"Accepted": ("False", "NotAllowedByListeners"),
                          "ResolvedRefs": ("True", "ResolvedRefs")}


def test_without_the_crd_routing_is_a_cluster_error_naming_the_crds(double, kube):
    double.set_httproute_crd(False)
    with pytest.raises(ClusterError, match=r"Kubernetes API: apply HTTPRoute shipyard/m "
                                           r"\(server-side apply\) failed: "
                                           r"ResourceNotFoundError: No matches found .* install "
                                           r"the Gateway API CRDs \(v1.3.0 or newer"):
        kube.set_weight("m", 10)


def test_a_service_name_that_is_not_a_dns_1035_label_is_422(api):
    """What a model name starting with a digit meets (issue 24, item 5)."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1m-canary"},
               "spec": {"ports": [{"port": 8501}]}}
    with pytest.raises(ApiException, match=said('Service "1m-canary" is invalid: metadata.name: '
                                                'Invalid value: "1m-canary": a DNS-1035 label')):
        client.CoreV1Api(api).create_namespaced_service(NS, service)


def test_deployment_status_hooks_and_crash_looping_pods(double, kube):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    double.progress_deadline_exceeded("m")
    double.crash_loop("m")
    status = client.AppsV1Api(kube.api).read_namespaced_deployment("m", NS).status
    progressing = next(c for c in status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    pods = client.CoreV1Api(kube.api).list_namespaced_pod(
        NS, label_selector="app.kubernetes.io/instance=m").items
    waiting = pods[0].status.container_statuses[0].state.waiting
    assert waiting.reason == "CrashLoopBackOff" and pods[0].status.container_statuses[
        0].restart_count == 5


def test_the_wait_fails_fast_on_progress_deadline_exceeded(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    double.progress_deadline_exceeded("m")
    with pytest.raises(ShipyardError, match="ProgressDeadlineExceeded"):
        kube.wait_for_deployment("m")


def test_the_wait_fails_fast_on_a_crash_looping_pod(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    double.deployment_behaviour("m", None)
    pod = double.crash_loop("m")["metadata"]["name"]
    with pytest.raises(ShipyardError, match=f"{pod}.*CrashLoopBackOff"):
        kube.wait_for_deployment("m")


# ---- the proxy: ClusterObserver --------------------------------------------------------------

def metrics_text(ok, errors):
    return (f'# TYPE :tensorflow:serving:request_count counter\n'
            f':tensorflow:serving:request_count{{model_name="m",status="OK"}} {ok}\n'
            f':tensorflow:serving:request_count{{model_name="m",status="INVALID_ARGUMENT"}} '
            f'{errors}\n'
            f'# TYPE :tensorflow:serving:request_latency histogram\n'
            f':tensorflow:serving:request_latency_bucket{{model_name="m",le="10000"}} {ok}\n'
            f':tensorflow:serving:request_latency_bucket{{model_name="m",le="+Inf"}} '
            f'{ok + errors}\n'
            f':tensorflow:serving:request_latency_sum{{model_name="m"}} 1\n'
            f':tensorflow:serving:request_latency_count{{model_name="m"}} {ok + errors}\n')


def observed(double, kube, tmp_path, samples, answer):
    kube.apply(render(ServingTarget(name="m", namespace=NS, canary_version=2)))
    kube.wait_for_deployment("m-canary")  # ready: the double makes its pod
    scrapes = iter([metrics_text(100, 0), metrics_text(190, 10)])
    double.serve_pods(r"m-canary-.*", 8501, lambda request: next(scrapes))
    for service in ("m", "m-canary"):
        double.serve_service(service, 8501, answer)
    (tmp_path / "samples.jsonl").write_text(samples)
    policy = RolloutPolicy(steps=[Step(weight=10)], check_interval_seconds=1,
                           gates=Gates(agreement=Agreement(samples=str(tmp_path / "samples.jsonl"),
                                                           min_top1=0.9)))
    return ClusterObserver(kube.api, NS, policy, sleep=lambda s: None).observe("m", None)


def test_observe_scrapes_pods_and_compares_services_through_the_proxy(double, kube, tmp_path):
    def predict(request):
        assert request.path == "/v1/models/m:predict" and request.method == "POST"
        return {"predictions": [[0.1, 0.9]] if request.name == "m" else [[0.2, 0.8]]}

    observation = observed(double, kube, tmp_path, '{"instances": [[1.0, 2.0]]}\n', predict)
    assert observation.error_rate == pytest.approx(0.1)
    assert observation.p99_latency_ms == 10.0
    assert observation.top1_agreement == 1.0
    assert observation.max_abs_diff == pytest.approx(0.1)
    scrapes = double.requests_matching("GET", r"/pods/m-canary-\w+-\w+:8501/proxy/monitoring")
    assert len(scrapes) == 2


def test_observe_reads_outputs_for_inputs_format_bodies(double, kube, tmp_path):
    observation = observed(double, kube, tmp_path, '{"inputs": [[1.0, 2.0]]}\n',
                           lambda request: {"outputs": [[0.1, 0.9]]})
    assert observation.top1_agreement == 1.0


def test_a_proxy_to_a_service_nobody_serves_is_503(double, kube):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    with pytest.raises(ApiException, match=said('no endpoints available for service "m"')):
        kube.api.call_api(f"/api/v1/namespaces/{NS}/services/m:8501/proxy/v1/models/m", "GET",
                          _preload_content=False)
    with pytest.raises(ApiException, match=said('services "x" not found')):
        kube.api.call_api(f"/api/v1/namespaces/{NS}/services/x:8501/proxy/", "GET",
                          _preload_content=False)


# ---- faults: what the real client sees ------------------------------------------------------

def apply_config_map(api, name="shipyard-rollout-m", data=None):
    resource = dynamic.DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    return dynamic.DynamicClient(api).server_side_apply(
        resource, body=config_map(name, data or {"state.json": "{}"}), field_manager="shipyard",
        force_conflicts=True)


@pytest.mark.parametrize(("status", "reason"), [(409, "Conflict"), (422, "Invalid"),
                                                (500, "InternalError"),
                                                (503, "ServiceUnavailable")])
def test_an_injected_status_reaches_the_client(double, api, status, reason):
    fault = double.inject("/configmaps/shipyard-rollout-m$", method="PATCH", status=status,
                          times=1)
    with pytest.raises(ApiException, match=rf"\b{status}\)?\nReason: ") as err:
        apply_config_map(api)
    assert json.loads(err.value.body)["reason"] == reason and fault.hits == 1
    apply_config_map(api)  # times=1: the next one goes through
    assert [r.answer for r in double.requests_matching("PATCH")] == [status, 201]


def test_an_injected_429_is_plain_text_with_retry_after(double, api):
    double.inject("/configmaps/shipyard-rollout-m$", method="PATCH", status=429, retry_after=3)
    with pytest.raises(ApiException, match=r"429\)?\nReason: Too Many Requests") as err:
        apply_config_map(api)  # a PATCH is not retried by urllib3
    assert err.value.headers["Retry-After"] == "3"
    body = err.value.body
    assert (body.decode() if isinstance(body, bytes) else body) == (
        "Too many requests, please try again later.\n")


def test_urllib3_absorbs_a_429_with_retry_after_on_a_get(double, api):
    """urllib3's default Retry retries idempotent methods on 413/429/503 with Retry-After,
    sleeping that long, 3 times: a GET sees a 429 only when it persists."""
    apps = client.AppsV1Api(api)
    double.inject("/deployments/m$", method="GET", status=429, retry_after=0, times=2)
    with pytest.raises(ApiException, match=said('deployments.apps "m" not found')):
        apps.read_namespaced_deployment("m", NS)
    assert [r.answer for r in double.requests] == [429, 429, 404]
    double.clear_requests()
    double.inject("/deployments/m$", method="GET", status=429, retry_after=0)
    with pytest.raises(ApiException, match=r"429\)?\nReason: Too Many Requests"):
        apps.read_namespaced_deployment("m", NS)
    assert [r.answer for r in double.requests] == [429] * 4  # 1 + urllib3's 3 retries


def test_a_dropped_connection_is_a_protocol_error_for_a_patch(double, api):
    double.inject("/configmaps/", method="PATCH", action="drop", times=1)
    with pytest.raises(urllib3.exceptions.ProtocolError, match="Connection aborted"):
        apply_config_map(api)
    assert double.requests_matching("PATCH")[0].answer == "dropped"


def test_dropped_gets_are_retried_by_urllib3_then_max_retry_error(double, api):
    core = client.CoreV1Api(api)
    double.inject("/configmaps/", method="GET", action="drop", times=2)
    with pytest.raises(ApiException, match=said('configmaps "c" not found')):
        core.read_namespaced_config_map("c", NS)  # urllib3 retried the GET: drops unseen
    double.inject("/configmaps/", method="GET", action="drop")
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Max retries exceeded"):
        core.read_namespaced_config_map("c", NS)
    assert [r.answer for r in double.requests_matching("GET", "/configmaps/")] == [
        "dropped", "dropped", 404] + ["dropped"] * 4


def test_a_hang_is_a_read_timeout_with_request_timeout(double, api):
    double.inject("/leases$", method="POST", action="hang", hang_s=2)
    body = client.V1Lease(metadata=client.V1ObjectMeta(name="l"),
                          spec=client.V1LeaseSpec(holder_identity="a"))
    with pytest.raises(urllib3.exceptions.ReadTimeoutError, match="Read timed out"):
        client.CoordinationV1Api(api).create_namespaced_lease(NS, body, _request_timeout=(2, 0.3))
    assert double.requests_matching("POST")[0].answer == "hung"


def test_one_503_during_the_deployment_wait_is_retried(double, kube, clock):
    kube.apply(render(ServingTarget(name="m", namespace=NS)))
    double.inject("/deployments/m$", method="GET", status=503, times=1)
    kube.wait_for_deployment("m")
