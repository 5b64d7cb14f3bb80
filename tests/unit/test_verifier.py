"""The verifier's comparisons and collection checks on plain arrays (no TensorFlow needed).
(The verifier as a process: integration/test_verifier.py.)"""

from __future__ import annotations

import numpy as np

from shipyard.exporter.verifier import _check_collections, array_digest, compare, plain_array


def test_floats_compare_within_tolerance():
    want = np.array([1.0, 2.0], np.float32)
    error, problem = compare(want + 1e-7, want, 1e-5, 1e-5)
    assert problem is None and 0 < error < 1e-6
    error, problem = compare(want + 0.5, want, 1e-5, 1e-5)
    assert error == 0.5
    assert problem == "max abs error 0.5 exceeds the tolerance (atol=1e-05, rtol=1e-05)"


def test_integers_strings_and_booleans_compare_exactly():
    # A float tolerance (rtol 1e-5) would accept 1_000_009 for 1_000_000.
    assert compare(np.array([1_000_009]), np.array([1_000_000]), 1e-5, 1e-5) == (
        float("inf"), "values differ")
    assert compare(np.array([7]), np.array([7]), 0, 0) == (0.0, None)
    assert compare(np.array([b"red"]), np.array([b"blue"]), 1, 1)[1] == "values differ"
    assert compare(np.array([True]), np.array([True]), 0, 0) == (0.0, None)
    assert compare(np.array([1]), np.array([1.0]), 0, 0)[1] == "dtype int64 != original float64"


def test_nan_only_matches_nan_and_never_reaches_the_report():
    both = compare(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), 0, 0)
    assert both == (0.0, None)  # a number JSON can carry, not NaN
    error, problem = compare(np.array([np.nan]), np.array([1.0]), 1e-5, 1e-5)
    assert error == float("inf")
    assert problem == ("non-finite values (NaN or Inf) where the original has other values, "
                       "or the reverse")
    assert compare(np.array([1.0]), np.array([np.nan]), 1e-5, 1e-5)[0] == float("inf")


def test_infinities_match_only_the_same_infinity():
    assert compare(np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf]), 0, 0) == (0.0, None)
    assert compare(np.array([np.inf]), np.array([-np.inf]), 1, 1)[0] == float("inf")
    assert compare(np.array([np.inf]), np.array([1e30]), 1, 1)[0] == float("inf")


def test_shape_mismatch_is_reported():
    assert compare(np.zeros((2, 1)), np.zeros((2,)), 1, 1)[1] == "shape (2, 1) != original (2,)"


def test_string_arrays_digest_by_value_and_travel_without_pickle(tmp_path):
    a = np.array([b"abc", b"de"], dtype=object)
    b = np.array([b"abc", b"de"], dtype=object)
    assert array_digest(a) == array_digest(b)
    np.savez(tmp_path / "x.npz", s=plain_array(a))
    assert np.load(tmp_path / "x.npz")["s"].tolist() == [b"abc", b"de"]  # allow_pickle=False


class _Restored:
    """What tf.saved_model.load returns for a collection: objects with .numpy()."""

    def __init__(self, value):
        self._value = np.asarray(value)

    def numpy(self):
        return self._value


class _Loaded:
    pass


def test_collections_must_come_back_with_the_same_count_and_values():
    loaded = _Loaded()
    loaded.opt = [_Restored([1.0, 2.0]), _Restored(3)]
    loaded.short = [_Restored([1.0])]
    loaded.changed = [_Restored([9.0])]
    expected = {"opt": [array_digest(np.array([1.0, 2.0])), array_digest(np.array(3))],
                "short": [array_digest(np.array([1.0]))] * 2,
                "changed": [array_digest(np.array([1.0]))],
                "gone": []}
    assert _check_collections(loaded, expected) == [
        "variable collection 'short': 1 variables restored, 2 exported",
        "variable collection 'changed': 1 of 1 variables restored with different values",
        "variable collection 'gone' is missing from the SavedModel",
    ]
