"""Generated inputs draw strings and integers from the model's vocabularies and keep values
outside them in the last row of a batch of several (shipyard.exporter.samples); no TensorFlow
(tf_example inputs, which serialize examples, are covered in integration/)."""

from __future__ import annotations

import numpy as np

from shipyard.core.spec import parse_spec
from shipyard.exporter.samples import Vocabularies, make_samples

VOCABULARIES = Vocabularies(strings=("red", "green", "blue"), integers=(4, 9, 12))
ENDPOINT = parse_spec({"endpoints": [{"name": "serve", "method": "call", "inputs": [{
    "color": {"shape": [None, 2], "dtype": "string"},
    "code": {"shape": [None], "dtype": "int32"},
    "x": {"shape": [None, 3], "dtype": "float32"}}]}]}).endpoints[0]


def by_batch(vocabularies: Vocabularies) -> dict[int, dict[str, np.ndarray]]:
    return {s.batch_size: s.named for s in make_samples(ENDPOINT, vocabularies)}


def test_a_batch_of_several_has_its_last_row_outside_the_vocabulary():
    samples = by_batch(VOCABULARIES)
    assert set(samples) == {1, 4}
    words = {w.encode() for w in VOCABULARIES.strings}
    assert set(samples[1]["color"].ravel()) <= words
    assert set(samples[1]["code"].ravel()) <= set(VOCABULARIES.integers)
    assert set(samples[4]["color"][:3].ravel()) <= words
    assert set(samples[4]["code"][:3]) <= set(VOCABULARIES.integers)
    # Both values of the last row are outside, and what was generated before them for other
    # vocabularies: the fallback strings; the smallest non-negative integers not known.
    assert samples[4]["color"][3].tolist() == [b"a", b"b"]
    assert samples[4]["code"][3] == 0
    assert samples[4]["color"].dtype.kind == "S" and samples[4]["code"].dtype == np.int32


def test_samples_are_seeded_and_values_outside_take_nothing_from_the_seed():
    first, again = by_batch(VOCABULARIES), by_batch(VOCABULARIES)
    closed = by_batch(Vocabularies(VOCABULARIES.strings, VOCABULARIES.integers,
                                   out_of_vocabulary=False))
    for size in (1, 4):
        for name in ("color", "code", "x"):
            np.testing.assert_array_equal(first[size][name], again[size][name])
        # Without values outside, every other value is the same.
        np.testing.assert_array_equal(first[size]["x"], closed[size]["x"])
        np.testing.assert_array_equal(first[size]["color"][:3], closed[size]["color"][:3])
    assert set(closed[4]["color"].ravel()) <= {w.encode() for w in VOCABULARIES.strings}
    assert set(closed[4]["code"]) <= set(VOCABULARIES.integers)


def test_values_outside_are_never_vocabulary_entries():
    crowded = Vocabularies(strings=("a", "b", "shipyard", "shipyard-0"), integers=(0, 1, 3))
    last_row = by_batch(crowded)[4]
    assert last_row["color"][3].tolist() == [b"shipyard-1", b"shipyard-2"]
    assert last_row["code"][3] == 2


def test_without_vocabularies_samples_are_as_generated_before():
    samples = by_batch(Vocabularies())
    for size in (1, 4):
        assert set(samples[size]["color"].ravel()) <= {b"a", b"b", b"shipyard"}
        assert set(samples[size]["code"].ravel()) <= set(range(10))
