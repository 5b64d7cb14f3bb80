"""The signature diff that decides whether a new version breaks clients (pure)."""

from __future__ import annotations

from shipyard.core.signatures import breaking_changes


def sig(inputs, outputs=None):
    return {"method_name": "tensorflow/serving/predict", "inputs": inputs,
            "outputs": outputs or {"score": {"dtype": "float32", "shape": [None, 1]}}}


def t(dtype="float32", shape=(None, 3)):
    return {"dtype": dtype, "shape": list(shape) if shape is not None else None}


OLD = {"serve": sig({"x": t()}), "serving_default": sig({"x": t()})}


def test_identical_and_additive_changes_are_compatible():
    assert breaking_changes(OLD, OLD) == []
    grown = {**OLD, "embed": sig({"x": t()}),
             "serve": sig({"x": t(shape=(None, None))},
                          {"score": t(shape=(None, 1)), "extra": t()})}
    assert breaking_changes(OLD, grown) == []


def test_removed_signature_input_and_output_are_breaking():
    new = {"serving_default": sig({"features": t()}, {"logit": t(shape=(None, 1))})}
    problems = breaking_changes(OLD, new)
    assert "signature 'serve' was removed (new signatures: ['serving_default'])" in problems
    assert any("input 'x' was removed or renamed (now: ['features'])" in p for p in problems)
    assert any("output 'score' was removed or renamed" in p for p in problems)
    assert any("new required input(s) ['features']" in p for p in problems)


def test_dtype_rank_and_fixed_dimension_changes_are_breaking():
    assert breaking_changes(OLD, {**OLD, "serve": sig({"x": t("float64")})}) == [
        "signature 'serve' input 'x': dtype changed float32 -> float64"]
    assert breaking_changes(OLD, {**OLD, "serve": sig({"x": t(shape=(None, 3, 1))})}) == [
        "signature 'serve' input 'x': rank changed 2 -> 3 ([None, 3] -> [None, 3, 1])"]
    assert breaking_changes(OLD, {**OLD, "serve": sig({"x": t(shape=(None, 4))})}) == [
        "signature 'serve' input 'x': shape changed [None, 3] -> [None, 4]"]


def test_unknown_rank_is_not_compared():
    assert breaking_changes({"s": sig({"x": t(shape=None)})}, {"s": sig({"x": t()})}) == []
