"""The shadow step's route (kube.manifests.route with mirror_percent), checked against the
vendored Gateway API HTTPRoute CRDs: v1.3.0 (the release the README names), and v1.2.1, whose
standard channel has no RequestMirror `percent`."""

from __future__ import annotations

import pytest
from support import gateway_api_schema as schema

from shipyard.core.errors import UsageError
from shipyard.kube.manifests import (
    REST_PORT,
    ServingTarget,
    gateway_api_release,
    kustomize_tree,
    route,
)


def mirrored(percent=20, **changes):
    return route(ServingTarget(name="churn", namespace="ml", canary_version=2,
                               mirror_percent=percent, **changes))


def stored(obj, release=schema.GATEWAY_API_RELEASE):
    """`obj` as the API server with that release's CRD stores it, and what it pruned."""
    defaulted, pruned = schema.default_and_prune(obj, release=release)
    return defaulted, pruned, schema.validate_httproute(defaulted, release=release)


def test_a_mirrored_route_copies_its_share_to_the_canary_whose_weight_stays_0():
    rule = mirrored(20)["spec"]["rules"][0]
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "churn-canary", "port": REST_PORT}, "percent": 20}}]
    assert rule["backendRefs"] == [{"name": "churn", "port": REST_PORT, "weight": 100},
                                   {"name": "churn-canary", "port": REST_PORT, "weight": 0}]
    assert rule["matches"] == route(ServingTarget(name="churn"))["spec"]["rules"][0]["matches"]


@pytest.mark.parametrize("percent", [1, 20, 100])
def test_the_mirrored_route_is_valid_for_the_v1_3_0_crd_and_nothing_is_pruned(percent):
    assert schema.GATEWAY_API_RELEASE == "v1.3.0"
    defaulted, pruned, errors = stored(mirrored(percent))
    assert (pruned, errors) == ([], [])
    mirror = defaulted["spec"]["rules"][0]["filters"][0]["requestMirror"]
    assert mirror["percent"] == percent
    assert mirror["backendRef"] == {"group": "", "kind": "Service", "name": "churn-canary",
                                    "port": REST_PORT}  # the CRD's defaults


def test_the_v1_2_1_crd_prunes_percent_which_would_mirror_everything():
    defaulted, pruned, errors = stored(mirrored(20), release="v1.2.1")
    assert pruned == ["spec.rules[0].filters[0].requestMirror.percent"] and errors == []
    assert "percent" not in defaulted["spec"]["rules"][0]["filters"][0]["requestMirror"]


def test_the_v1_3_0_crd_refuses_a_percent_above_100():
    """What the API server answers if the range check in kube.manifests were gone."""
    bad = mirrored(20)
    bad["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"] = 120
    errors = stored(bad)[2]
    assert [e.field for e in errors] == ["spec.rules[0].filters[0].requestMirror.percent"]


def test_with_gateway_api_v1_2_a_full_mirror_is_rendered_without_percent():
    route_12 = mirrored(100, gateway_api_version="v1.2.1")
    mirror = route_12["spec"]["rules"][0]["filters"][0]["requestMirror"]
    assert mirror == {"backendRef": {"name": "churn-canary", "port": REST_PORT}}
    assert stored(route_12, release="v1.2.1")[1:] == ([], [])


@pytest.mark.parametrize("version", ["v1.2.1", "v1.2.0", "1.1", "v0.8.0"])
def test_with_gateway_api_before_v1_3_a_partial_mirror_is_refused(version):
    with pytest.raises(UsageError, match=rf"serving.gateway_api_version is {version}: the "
                                         r"Gateway API has RequestMirror's `percent` in its "
                                         r"standard channel only from v1.3.0 on, so mirror: 20 "
                                         r"cannot be rendered .* Install the Gateway API "
                                         r"v1.3.0 CRDs or newer .* or use mirror: 100"):
        mirrored(20, gateway_api_version=version)


@pytest.mark.parametrize(("version", "release"), [
    ("v1.3.0", (1, 3)), ("1.3", (1, 3)), ("v1.4.0-rc.1", (1, 4)), ("v2.0.0", (2, 0)),
    (" v1.2.1 ", (1, 2))])
def test_gateway_api_versions_are_read_by_major_and_minor(version, release):
    assert gateway_api_release(version) == release


@pytest.mark.parametrize("version", ["", "latest", "v1", "1.3.x"])
def test_a_gateway_api_version_that_is_no_release_is_refused(version):
    with pytest.raises(UsageError, match=r"serving.gateway_api_version: expected a Gateway "
                                         rf"API release such as v1.3.0, got '{version}'"):
        mirrored(20, gateway_api_version=version)


def test_a_mirror_and_a_weight_together_are_a_bug_of_the_caller():
    with pytest.raises(ValueError, match=r"a mirrored canary takes no weighted traffic: "
                                         r"mirror_percent 20 with canary_weight 10"):
        mirrored(20, canary_weight=10)


@pytest.mark.parametrize("percent", [-1, 101])
def test_a_mirror_share_outside_1_to_100_is_a_bug_of_the_caller(percent):
    with pytest.raises(ValueError, match=rf"mirror_percent: expected 1 to 100, got {percent}"):
        mirrored(percent)


def test_routes_of_weights_have_no_filter_and_k8s_has_no_mirror():
    for weight in (0, 10, 100):
        rule = route(ServingTarget(name="churn", canary_version=2,
                                   canary_weight=weight))["spec"]["rules"][0]
        assert "filters" not in rule
    assert not any("RequestMirror" in text for text in kustomize_tree().values())
