"""Gate decisions from observed figures. Pure.

An Observation holds what the adapters measured for the canary during the current step; a
figure is None when there was nothing to measure (no requests yet, no samples answered).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shipyard.rollout.policy import Gates

PASS, FAIL, NO_DATA = "pass", "fail", "no_data"


@dataclass(frozen=True)
class Observation:
    # How many requests the canary served in the check's window (mirrored ones included);
    # None when unknown. Below the gates' min_requests, error rate and latency are no data.
    requests: float | None = None
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    # What went wrong while measuring the canary (a predict error, outputs of another
    # shape): each one fails the gates, since it is what a canary must not do.
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    outcome: str  # PASS | FAIL | NO_DATA
    figures: dict[str, Any] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def evaluate(gates: Gates, seen: Observation) -> GateResult:
    """Fail if any configured gate fails (even while others lack data); else no_data if any
    configured gate lacks data; else pass. With `min_requests`, a window in which the canary
    served fewer requests (or an unknown number) gives the error and latency gates no data:
    three requests prove nothing either way."""
    too_few = gates.min_requests is not None and not (
        seen.requests is not None and seen.requests >= gates.min_requests)
    if too_few:
        seen = replace(seen, error_rate=None, p99_latency_ms=None)
    checks: list[tuple[str, float | None, bool]] = []  # (figure, value, ok when present)
    if gates.max_error_rate is not None:
        checks.append(("error_rate", seen.error_rate,
                       seen.error_rate is not None and seen.error_rate <= gates.max_error_rate))
    if gates.max_p99_latency_ms is not None:
        checks.append(("p99_latency_ms", seen.p99_latency_ms,
                       seen.p99_latency_ms is not None
                       and seen.p99_latency_ms <= gates.max_p99_latency_ms))
    if gates.agreement is not None and gates.agreement.min_top1 is not None:
        checks.append(("top1_agreement", seen.top1_agreement,
                       seen.top1_agreement is not None
                       and seen.top1_agreement >= gates.agreement.min_top1))
    if gates.agreement is not None and gates.agreement.max_abs_diff is not None:
        checks.append(("max_abs_diff", seen.max_abs_diff,
                       seen.max_abs_diff is not None
                       and seen.max_abs_diff <= gates.agreement.max_abs_diff))
    figures: dict[str, Any] = {name: value for name, value, _ in checks}
    if gates.min_requests is not None:
        figures["requests"] = seen.requests
    failures = tuple(f"{name} {value:g} is outside {_threshold(gates, name)}"
                     for name, value, ok in checks if value is not None and not ok)
    failures += tuple(seen.errors)
    missing = tuple(
        f"{name} (the canary served {_count(seen.requests)} request(s), fewer than "
        f"min_requests {gates.min_requests})" if too_few and name in _TRAFFIC_FIGURES else name
        for name, value, _ in checks if value is None)
    if failures:
        return GateResult(FAIL, figures, failures, missing)
    if missing:
        return GateResult(NO_DATA, figures, (), missing)
    return GateResult(PASS, figures)


_TRAFFIC_FIGURES = ("error_rate", "p99_latency_ms")


def _count(requests: float | None) -> str:
    return "an unknown number of" if requests is None else f"{requests:g}"


def _threshold(gates: Gates, figure: str) -> str:
    """The limit a failed figure broke. Only that figure's limit is formatted: the others may
    be unset (None) in the policy."""
    agreement = gates.agreement
    limit = {"error_rate": ("max_error_rate", lambda: gates.max_error_rate),
             "p99_latency_ms": ("max_p99_latency_ms", lambda: gates.max_p99_latency_ms),
             "top1_agreement": ("min_top1", lambda: agreement and agreement.min_top1),
             "max_abs_diff": ("max_abs_diff", lambda: agreement and agreement.max_abs_diff)}
    name, value = limit[figure]
    return f"{name} {value():g}"
