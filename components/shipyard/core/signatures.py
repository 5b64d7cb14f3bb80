"""Serving signatures as plain data, and the diff that decides whether a change breaks clients.

A signature set is
`{signature_name: {"method_name": str, "inputs": {name: T}, "outputs": {name: T}}}`
with `T = {"dtype": "float32", "shape": [None, 3]}` (shape None for unknown rank). Pure.
"""

from __future__ import annotations

from typing import Any

Signatures = dict[str, dict[str, Any]]


def breaking_changes(old: Signatures, new: Signatures) -> list[str]:
    """What in `new` would break a client written against `old` (empty: compatible).

    Breaking: a removed (or renamed) signature, input or output; a kind (method name) change;
    a new input (TF Serving has no optional inputs, so old requests would lack it); a dtype
    change; a rank change; a change of a dimension both sides fix. Added signatures and
    outputs, and a fixed dimension becoming unknown, are compatible.
    """
    problems: list[str] = []
    for sig_name in sorted(old):
        if sig_name not in new:
            problems.append(f"signature {sig_name!r} was removed (new signatures: "
                            f"{sorted(new)})")
            continue
        before, after = old[sig_name], new[sig_name]
        old_method, new_method = before.get("method_name"), after.get("method_name")
        if old_method and new_method and old_method != new_method:
            # The Classify/Regress/Predict APIs each accept only their own method name.
            problems.append(f"signature {sig_name!r}: kind changed {_kind(old_method)} -> "
                            f"{_kind(new_method)} (method name {old_method} -> {new_method})")
            continue
        for side in ("inputs", "outputs"):
            problems.extend(_tensor_changes(sig_name, side, before[side], after[side]))
        added_inputs = sorted(set(after["inputs"]) - set(before["inputs"]))
        if added_inputs:
            problems.append(f"signature {sig_name!r}: new required input(s) {added_inputs}")
    return problems


def _tensor_changes(sig_name: str, side: str, before: dict[str, Any],
                    after: dict[str, Any]) -> list[str]:
    problems = []
    kind = side[:-1]
    for tensor_name in sorted(before):
        where = f"signature {sig_name!r} {kind} {tensor_name!r}"
        if tensor_name not in after:
            problems.append(f"{where} was removed or renamed (now: {sorted(after)})")
            continue
        old_t, new_t = before[tensor_name], after[tensor_name]
        if old_t["dtype"] != new_t["dtype"]:
            problems.append(f"{where}: dtype changed {old_t['dtype']} -> {new_t['dtype']}")
        old_shape, new_shape = old_t["shape"], new_t["shape"]
        if old_shape is None or new_shape is None:
            continue
        if len(old_shape) != len(new_shape):
            problems.append(f"{where}: rank changed {len(old_shape)} -> {len(new_shape)} "
                            f"({_shape(old_shape)} -> {_shape(new_shape)})")
        elif any(o is not None and n is not None and o != n
                 for o, n in zip(old_shape, new_shape)):
            problems.append(f"{where}: shape changed {_shape(old_shape)} -> {_shape(new_shape)}")
    return problems


def _kind(method_name: str) -> str:
    return method_name.rsplit("/", 1)[-1]


def _shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"
