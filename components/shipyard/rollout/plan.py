"""`shipyard rollout plan`: the steps the state machine will take for a policy. Pure.

Read from the same policy model the controller runs on (rollout/policy.py), so a plan that
prints is a policy `rollout start` accepts.
"""

from __future__ import annotations

from typing import Any

from shipyard.rollout.policy import APPROVAL, MIRROR, WEIGHT, RolloutPolicy


def plan(policy: RolloutPolicy) -> dict[str, Any]:
    """{"steps": [...], "gates", "no_data", "check_interval_seconds", "notify"}: each step
    with what the canary gets (weight or mirror), how long it is held or what it waits for,
    and what is judged meanwhile; the promotion last."""
    gates = _gates(policy)
    steps: list[dict[str, Any]] = []
    mirroring = False
    for number, step in enumerate(policy.steps, 1):
        entry: dict[str, Any] = {"step": number, "kind": step.kind}
        if step.kind == WEIGHT:
            entry.update(weight=step.weight, mirror=0, pause_seconds=step.pause_seconds,
                         removes_mirror=mirroring)
            mirroring = False
        elif step.kind == MIRROR:
            entry.update(weight=0, mirror=step.mirror, pause_seconds=step.pause_seconds)
            mirroring = True
        else:
            entry.update(timeout_seconds=step.timeout_seconds,
                         on_timeout="abort" if step.timeout_seconds else None)
        entry["gates"] = gates if step.kind != APPROVAL else {
            "judged": gates["judged"], "fails_on": "a failed gate rolls back while waiting",
            "no_data": "does not count while waiting"}
        steps.append(entry)
    steps.append({"step": len(policy.steps) + 1, "kind": "promote",
                  "removes_mirror": mirroring,
                  "does": "stable serves the version, the canary is removed, champion moves"})
    return {"steps": steps, "gates": gates, "no_data": policy.no_data,
            "max_checks_without_data": policy.max_checks_without_data,
            "check_interval_seconds": policy.check_interval_seconds,
            "notify": list(policy.notify)}


def _gates(policy: RolloutPolicy) -> dict[str, Any]:
    gates = policy.gates
    judged = {}
    if gates.max_error_rate is not None:
        judged["max_error_rate"] = gates.max_error_rate
    if gates.max_p99_latency_ms is not None:
        judged["max_p99_latency_ms"] = gates.max_p99_latency_ms
    if gates.agreement is not None:
        judged["agreement"] = {k: v for k, v in gates.agreement.model_dump().items()
                               if v is not None}
    return {"judged": judged, "min_requests": gates.min_requests}


def describe(planned: dict[str, Any]) -> str:
    """The plan in words, one line per step."""
    gates = planned["gates"]
    judged = ", ".join(f"{k} {v}" for k, v in gates["judged"].items()
                       if k != "agreement") or "no traffic gate"
    if "agreement" in gates["judged"]:
        judged += f", agreement on {gates['judged']['agreement']['samples']}"
    minimum = (f"; error and latency need at least {gates['min_requests']} canary requests "
               "per check" if gates["min_requests"] else "")
    lines = [f"gates: {judged}{minimum}; no data: {planned['no_data']} (at most "
             f"{planned['max_checks_without_data']} checks), a check every "
             f"{planned['check_interval_seconds']:g} s"]
    for step in planned["steps"]:
        head = f"{step['step']}. "
        if step["kind"] == WEIGHT:
            lines.append(head + ("stop mirroring; " if step["removes_mirror"] else "")
                         + f"canary weight {step['weight']}% for {step['pause_seconds']:g} s "
                         "of passing gates")
        elif step["kind"] == MIRROR:
            lines.append(head + f"mirror {step['mirror']}% of stable's traffic to the canary "
                         f"(weight 0: users see stable's answers) for "
                         f"{step['pause_seconds']:g} s of passing gates")
        elif step["kind"] == APPROVAL:
            wait = (f"abort after {step['timeout_seconds']:g} s without one"
                    if step["timeout_seconds"] else "no timeout")
            lines.append(head + "wait for `shipyard rollout approve` (gates still judged; "
                         f"{wait})")
        else:
            lines.append(head + ("stop mirroring; " if step["removes_mirror"] else "")
                         + "promote: " + step["does"])
    if planned["notify"]:
        lines.append("notify: " + ", ".join(planned["notify"]))
    return "\n".join(lines)
