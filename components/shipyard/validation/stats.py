"""Comparison statistics, accumulated per batch and merged across workers. Pure (numpy).

For each comparison ("parity": the version against its source model; "agreement": against
another version) and each output: examples, elements, sum and max of absolute differences,
examples within tolerance (every element |a - b| <= atol + rtol * |reference|), and for
classification-shaped outputs (last dimension > 1) examples whose arg-max agrees.
Non-numeric outputs (strings) count as within tolerance only when equal.

A classify endpoint's `classes` ([N, K] labels, the same K labels on every row of a shipyard
export) would always agree element-wise, so its top-1 figure is what a classifier's caller
reads: per example, the label at the arg-max of `scores`, compared between the two sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Stats = dict[str, dict[str, dict[str, Any]]]  # comparison -> output -> figures


def compare_batch(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  atol: float, rtol: float, *, kind: str = "predict"
                  ) -> dict[str, dict[str, Any]]:
    figures = {}
    for name, expected in reference.items():
        expected = np.asarray(expected)
        got = np.asarray(candidate[name])
        if got.shape != expected.shape:  # broadcasting would compare the wrong elements
            raise ValueError(f"output {name}: shape {list(got.shape)} where the reference has "
                             f"{list(expected.shape)}; the two do not compute the same thing")
        examples = expected.shape[0] if expected.ndim else 1
        numeric = expected.dtype.kind in "fiub" and got.dtype.kind in "fiub"
        if numeric:
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            finite = np.isfinite(diff)
            allowed = atol + rtol * np.abs(expected.astype(np.float64))
            ok = (finite & (diff <= allowed)).reshape(examples, -1).all(axis=1)
            entry = {"examples": examples, "elements": int(finite.sum()),
                     "sum_abs": float(diff[finite].sum()),
                     "max_abs": float(diff[finite].max(initial=0.0)),
                     "non_finite": int((~finite).sum()), "within": int(ok.sum())}
        else:
            equal = (got == expected).reshape(examples, -1).all(axis=1)
            entry = {"examples": examples, "elements": 0, "sum_abs": 0.0, "max_abs": None,
                     "non_finite": 0, "within": int(equal.sum())}
        entry["top1"] = (int((expected.argmax(-1) == got.argmax(-1)).reshape(examples, -1)
                             .all(axis=1).sum())
                         if numeric and expected.ndim >= 2 and expected.shape[-1] > 1 else None)
        figures[name] = entry
    if kind == "classify" and {"classes", "scores"} <= reference.keys():
        figures["classes"]["top1"] = _top_label_agreement(reference, candidate)
    return figures


def top_labels(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Per example, the class label with the highest score (the first one on a tie, as
    argmax picks it)."""
    classes, scores = np.asarray(outputs["classes"]), np.asarray(outputs["scores"])
    best = scores.reshape(scores.shape[0], -1).argmax(-1)
    return classes.reshape(classes.shape[0], -1)[np.arange(classes.shape[0]), best]


def _top_label_agreement(reference: dict[str, np.ndarray],
                         candidate: dict[str, np.ndarray]) -> int | None:
    # One score per example names no winner: its label would always "agree".
    if np.asarray(reference["scores"]).reshape(len(reference["scores"]), -1).shape[-1] < 2:
        return None
    return int((top_labels(reference) == top_labels(candidate)).sum())


def merge(a: Stats, b: Stats) -> Stats:
    merged: Stats = {k: {o: dict(f) for o, f in v.items()} for k, v in a.items()}
    for comparison, outputs in b.items():
        target = merged.setdefault(comparison, {})
        for output, figures in outputs.items():
            if output not in target:
                target[output] = dict(figures)
                continue
            mine = target[output]
            for key in ("examples", "elements", "sum_abs", "non_finite", "within"):
                mine[key] += figures[key]
            if figures["max_abs"] is not None:
                mine["max_abs"] = max(mine["max_abs"] or 0.0, figures["max_abs"])
            if mine["top1"] is not None and figures["top1"] is not None:
                mine["top1"] += figures["top1"]
    return merged


def summarize(stats: Stats) -> dict[str, dict[str, dict[str, Any]]]:
    """Per comparison and output: max/mean abs error, share within tolerance, top-1."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for comparison, outputs in stats.items():
        summary[comparison] = {}
        for output, f in sorted(outputs.items()):
            summary[comparison][output] = {
                "examples": f["examples"],
                "non_finite": f["non_finite"],
                "max_abs_error": f["max_abs"],
                "mean_abs_error": f["sum_abs"] / f["elements"] if f["elements"] else None,
                "within_tolerance": f["within"] / f["examples"] if f["examples"] else None,
                "top1_agreement": (f["top1"] / f["examples"]
                                   if f["top1"] is not None and f["examples"] else None),
            }
    return summary


def gate_failures(summary: dict[str, dict[str, dict[str, Any]]], *,
                  max_abs_error: float | None, min_agreement: float | None,
                  agreement_outputs: tuple[str, ...] | None = None) -> list[str]:
    """What misses its threshold. Parity: max abs error <= --max-abs-error when given (for
    numeric outputs), else every example within the spec's tolerance; a NaN or infinite
    difference always fails. Agreement (only with --min-agreement): top-1 agreement for
    classification-shaped outputs and a classify endpoint's `classes` (its top-1 label), else
    the share of examples within the spec's tolerance; on `agreement_outputs` only, when
    given."""
    failures = []
    for output, f in summary.get("parity", {}).items():
        if f["non_finite"]:
            failures.append(f"parity {output}: {f['non_finite']} NaN or infinite difference(s)")
        elif max_abs_error is not None and f["max_abs_error"] is not None:
            if not f["max_abs_error"] <= max_abs_error:
                failures.append(f"parity {output}: max abs error {f['max_abs_error']:.3g} > "
                                f"--max-abs-error {max_abs_error:g}")
        elif f["within_tolerance"] is not None and f["within_tolerance"] < 1.0:
            failures.append(f"parity {output}: {f['within_tolerance']:.2%} of examples within "
                            f"the spec's tolerance (max abs error {f['max_abs_error']})")
    if min_agreement is not None:
        for output, f in summary.get("agreement", {}).items():
            if agreement_outputs is not None and output not in agreement_outputs:
                continue
            value = f["top1_agreement"] if f["top1_agreement"] is not None else \
                f["within_tolerance"]
            if value is None or not value >= min_agreement:
                failures.append(f"agreement {output}: {value} < --min-agreement "
                                f"{min_agreement:g}")
    return failures
