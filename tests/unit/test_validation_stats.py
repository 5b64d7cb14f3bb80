"""Validation statistics and example mapping (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.validation.examples import ExampleError, InputDecl, csv_row, json_row, to_inputs
from shipyard.validation.stats import compare_batch, gate_failures, merge, summarize

X = [InputDecl("x", "float32", (None, 3)), InputDecl("city", "string", (None, 1))]


def test_parity_figures_merge_across_batches():
    first = compare_batch({"y": np.array([[1.0, 2.0], [3.0, 4.0]])},
                          {"y": np.array([[1.0, 2.5], [3.0, 4.0]])}, atol=0.1, rtol=0.0)
    second = compare_batch({"y": np.array([[0.0, 1.0]])}, {"y": np.array([[0.0, 1.0]])},
                           atol=0.1, rtol=0.0)
    summary = summarize({"parity": merge({"parity": first}, {"parity": second})["parity"]})
    y = summary["parity"]["y"]
    assert y["examples"] == 3 and y["max_abs_error"] == 0.5
    assert y["mean_abs_error"] == pytest.approx(0.5 / 6)
    assert y["within_tolerance"] == pytest.approx(2 / 3)
    assert y["top1_agreement"] == 1.0  # arg-max unchanged in every row
    assert gate_failures(summary, max_abs_error=None, min_agreement=None) == [
        "parity y: 66.67% of examples within the spec's tolerance (max abs error 0.5)"]
    assert gate_failures(summary, max_abs_error=0.5, min_agreement=None) == []


def test_the_agreement_gate_covers_only_the_named_outputs():
    champion = {"probs": np.array([[0.9, 0.1], [0.2, 0.8]]), "score": np.array([[1.0], [2.0]])}
    challenger = {"probs": np.array([[0.7, 0.3], [0.4, 0.6]]),
                  "score": np.array([[1.3], [2.4]])}
    summary = summarize({"agreement": compare_batch(champion, challenger, 1e-5, 1e-5)})
    assert summary["agreement"]["probs"]["top1_agreement"] == 1.0
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.9) == [
        "agreement score: 0.0 < --min-agreement 0.9"]
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.9,
                         agreement_outputs=("probs",)) == []


def test_nan_never_passes_a_gate():
    figures = compare_batch({"y": np.array([[1.0], [2.0]])}, {"y": np.array([[np.nan], [2.0]])},
                            atol=1e-5, rtol=0.0)
    summary = summarize({"parity": figures})
    assert summary["parity"]["y"]["non_finite"] == 1
    assert summary["parity"]["y"]["max_abs_error"] == 0.0  # of the finite differences
    assert gate_failures(summary, max_abs_error=100.0, min_agreement=None) == [
        "parity y: 1 NaN or infinite difference(s)"]


def test_string_outputs_compare_exactly_under_any_gate():
    same = compare_batch({"label": np.array([[b"a"], [b"b"]], dtype=object)},
                         {"label": np.array([[b"a"], [b"b"]], dtype=object)}, 1e-5, 1e-5)
    summary = summarize({"parity": same})
    assert summary["parity"]["label"]["within_tolerance"] == 1.0
    assert gate_failures(summary, max_abs_error=0.1, min_agreement=None) == []
    differs = summarize({"parity": compare_batch(
        {"label": np.array([[b"a"]], dtype=object)}, {"label": np.array([[b"z"]], dtype=object)},
        1e-5, 1e-5)})
    assert gate_failures(differs, max_abs_error=0.1, min_agreement=None) == [
        "parity label: 0.00% of examples within the spec's tolerance (max abs error None)"]


def test_outputs_of_another_shape_are_refused_not_broadcast():
    with pytest.raises(ValueError, match=r"output y: shape \[2, 1\] where the reference has "
                                         r"\[2\]"):
        compare_batch({"y": np.zeros(2)}, {"y": np.zeros((2, 1))}, 1e-5, 1e-5)


def test_agreement_gate_uses_top1_for_classification_outputs():
    figures = compare_batch({"p": np.array([[0.9, 0.1], [0.2, 0.8]])},
                            {"p": np.array([[0.6, 0.4], [0.7, 0.3]])}, 1e-5, 1e-5)
    summary = summarize({"agreement": figures})
    assert summary["agreement"]["p"]["top1_agreement"] == 0.5
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.4) == []
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.9) == [
        "agreement p: 0.5 < --min-agreement 0.9"]


def test_examples_map_by_name_from_csv_and_json():
    by_columns = to_inputs(csv_row(["x_0", "x_1", "x_2", "city"], '1,2,3,New York'), X)
    in_one_cell = to_inputs(csv_row(["x", "city"], '"1 2 3",New York'), X)
    from_json = to_inputs(json_row('{"x": [1, 2, 3], "city": ["New York"], "extra": 1}'), X)
    for inputs in (by_columns, in_one_cell, from_json):
        np.testing.assert_array_equal(inputs["x"], np.array([1, 2, 3], np.float32))
        assert inputs["x"].dtype == np.float32
        assert list(inputs["city"]) == [b"New York"]


@pytest.mark.parametrize("row, message", [
    ({"city": "a"}, r"missing feature\(s\) x \(the endpoint's inputs are x: float32\[None, 3\], "
                    r"city: string\[None, 1\]; the example has city\)"),
    ({"x": [1, 2], "city": "a"}, r"feature x: expected 3 value\(s\) for the declared shape "
                                 r"\[None, 3\], got 2"),
    ({"x": ["1", "two", "3"], "city": "a"}, r"feature x: cannot read \['1', 'two', '3'\] as "
                                            r"float32"),
    ({"x": [1, None, 3], "city": "a"}, r"feature x: null value\(s\)"),
])
def test_unmappable_examples_name_the_feature(row, message):
    with pytest.raises(ExampleError, match=message):
        to_inputs(row, X)


def test_integer_inputs_refuse_fractions():
    with pytest.raises(ExampleError, match=r"feature ids: cannot read \[1.5\] as int64"):
        to_inputs({"ids": [1.5]}, [InputDecl("ids", "int64", (None, 1))])


# A tf.Example record's numbers reach to_inputs as one numpy array (float32 for a float_list,
# int64 for an int64_list; stages._feature_values), not as a list of Python numbers.
@pytest.mark.parametrize("values, decl", [
    (np.array([0.1, 2.5, -3], np.float32), InputDecl("x", "float32", (None, 3))),
    (np.array([0.1, 2.5, -3], np.float32), InputDecl("x", "float64", (None, 3))),
    (np.array([0.1, 2.5, -3, 4], np.float32), InputDecl("x", "float16", (None, 2, 2))),
    (np.array([1, 2, 3, 4, 5, 6], np.int64), InputDecl("x", "int32", (None, None, 2))),
    (np.array([2**40 + 1, -7], np.int64), InputDecl("x", "float32", (None, 2))),
    (np.array([1, 0, 1], np.int64), InputDecl("x", "bool", (None, 3))),
    (np.array([0.1, 2.5], np.float32), InputDecl("x", "string", (None, 2))),
])
def test_record_arrays_convert_exactly_as_the_same_values_in_a_list(values, decl):
    from_array = to_inputs({"x": values}, [decl])["x"]
    from_list = to_inputs({"x": values.tolist()}, [decl])["x"]

    assert from_array.dtype == from_list.dtype and from_array.shape == from_list.shape
    np.testing.assert_array_equal(from_array, from_list)


@pytest.mark.parametrize("values, decl, message", [
    (np.array([1, 2], np.float32), InputDecl("x", "float32", (None, 3)),
     r"feature x: expected 3 value\(s\) for the declared shape \[None, 3\], got 2"),
    (np.array([1, 2, 3], np.int64), InputDecl("x", "int32", (None, None, 2)),
     r"feature x: 3 value\(s\) do not fit the declared shape \[None, None, 2\]"),
    (np.array([1.5, 2], np.float32), InputDecl("x", "int64", (None, 2)),
     r"feature x: cannot read \[1.5, 2.0\] as int64 \(not an integer\)"),
    (np.array([300], np.int64), InputDecl("x", "int8", (None, 1)),
     r"feature x: cannot read \[300\] as int8 \(not an integer\)"),
])
def test_record_arrays_that_do_not_fit_name_the_feature(values, decl, message):
    with pytest.raises(ExampleError, match=message):
        to_inputs({"x": values}, [decl])


def test_classify_agreement_is_on_the_top1_label_per_example():
    """`classes` repeats the same labels on every row: equal element-wise even where the two
    sides pick another class. Its top-1 figure compares the label at the arg-max of scores;
    the rows' label lists may differ (a SavedModel's classify signature can give per-example
    classes), so the label is compared, not the index."""
    labels = np.array([[b"red", b"green", b"blue"]] * 3, dtype=object)
    champion = {"classes": labels, "scores": np.array([[.7, .2, .1], [.1, .8, .1], [.2, .3, .5]])}
    challenger = {"classes": np.array([[b"red", b"green", b"blue"]] * 2
                                      + [[b"blue", b"green", b"red"]], dtype=object),
                  "scores": np.array([[.6, .3, .1], [.5, .4, .1], [.5, .3, .2]])}
    figures = compare_batch(champion, challenger, 1e-5, 1e-5, kind="classify")
    # Rows: red/red, green/red, blue/blue (the challenger's third row lists blue first).
    assert figures["classes"]["top1"] == 2 and figures["classes"]["within"] == 2
    assert figures["scores"]["top1"] == 1  # by index: the third row's argmax differs
    summary = summarize({"agreement": figures})
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.6,
                         agreement_outputs=("classes",)) == []
    assert gate_failures(summary, max_abs_error=None, min_agreement=0.7,
                         agreement_outputs=("classes",)) == [
        f"agreement classes: {2 / 3} < --min-agreement 0.7"]
    # A predict endpoint's outputs named classes/scores are compared as before.
    assert compare_batch(champion, challenger, 1e-5, 1e-5)["classes"]["top1"] is None
    # One score per example names no winner: no top-1 figure, the share within tolerance.
    single = {"classes": labels[:, :1], "scores": np.array([[.7], [.1], [.2]])}
    assert compare_batch(single, single, 1e-5, 1e-5, kind="classify")["classes"]["top1"] is None
