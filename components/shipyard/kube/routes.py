"""The HTTPRoute as the API server stored it and as its Gateways report it. Pure.

kube.manifests renders the route; kube.cluster applies it and gates each change on what is
read here: the Gateways' RouteParentStatus (Accepted, ResolvedRefs) and, for the shadow
step, whether the API server kept RequestMirror's `percent` (a CRD older than Gateway API
v1.3.0 prunes it, and the Gateway would then mirror every request).
"""

from __future__ import annotations

import copy
from typing import Any


def stable_only(routed: dict[str, Any]) -> dict[str, Any]:
    """`routed` with its rule's backendRefs cut to the stable Service, and no filter: the
    route for a canary whose Service is gone (or going)."""
    out = copy.deepcopy(routed)
    rule = out["spec"]["rules"][0]
    rule["backendRefs"] = rule["backendRefs"][:1]
    rule.pop("filters", None)
    return out


def mirror_of(httproute: dict[str, Any]) -> dict[str, Any] | None:
    """The requestMirror of the route's first rule (rule-level filters), or None."""
    rules = (httproute.get("spec") or {}).get("rules") or [{}]
    for entry in rules[0].get("filters") or []:
        if entry.get("type") == "RequestMirror":
            return entry.get("requestMirror") or entry.get("request_mirror") or {}
    return None


def percent_pruned(route_name: str, asked: int, undone: str) -> str:
    """The error of a mirror whose `percent` the API server dropped."""
    return (f"HTTPRoute {route_name}: the API server dropped RequestMirror's percent "
            f"({asked}): its HTTPRoute CRD is older than Gateway API v1.3.0, whose standard "
            "channel has the field, so the Gateway would mirror every request; "
            f"{undone}. Install the Gateway API v1.3.0 CRDs (standard channel) or newer, or "
            "set serving.gateway_api_version to the release installed (before v1.3 only "
            "mirror: 100 is possible)")


def route_problems(httproute: dict[str, Any], gateways: list[str]) -> list[str]:
    """What keeps the route from carrying traffic as written, per Gateway in `gateways`
    (empty: it does). Pure. A condition for an older generation does not count.
    Entries starting with "refused" will not get better by waiting (a condition False)."""
    generation = (httproute.get("metadata") or {}).get("generation")
    parents = ((httproute.get("status") or {}).get("parents")) or []
    problems = []
    for gateway in gateways:
        status = next((p for p in parents
                       if (p.get("parentRef") or p.get("parent_ref") or {}).get("name")
                       == gateway), None)
        if status is None:
            problems.append(f"not yet accepted by Gateway {gateway} (no status from it)")
            continue
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        for kind in ("Accepted", "ResolvedRefs"):
            condition = conditions.get(kind)
            observed = (condition or {}).get("observedGeneration",
                                             (condition or {}).get("observed_generation"))
            if condition is None or (generation is not None and observed is not None
                                     and observed < generation):
                problems.append(f"Gateway {gateway} has not yet reported {kind} for "
                                f"generation {generation}")
            elif condition.get("status") == "Unknown":  # e.g. Pending: not reconciled yet
                problems.append(f"Gateway {gateway} reports {kind} Unknown "
                                f"({condition.get('reason')})")
            elif condition.get("status") != "True":
                problems.append(f"refused by Gateway {gateway}: {kind} is "
                                f"{condition.get('status')} ({condition.get('reason')}: "
                                f"{condition.get('message')})")
    return problems
