"""Samples carry values outside a model's vocabularies only where the model accepts them: a
Keras lookup without OOV indices (num_oov_indices=0) fails on any other value, as a request
to it would, so its samples hold vocabulary entries only and it still exports."""

from __future__ import annotations

import pytest
from support.exports import export, read_warmup

WORDS = ["small", "large"]


def test_a_keras_lookup_without_oov_indices_is_sampled_inside_its_vocabulary(launcher, repo,
                                                                             tmp_path):
    import keras
    import tensorflow as tf

    size = keras.Input((1,), dtype="string", name="size")
    one_hot = keras.layers.StringLookup(vocabulary=WORDS, num_oov_indices=0,
                                        output_mode="one_hot")(size)
    model = keras.Model(size, keras.layers.Dense(1)(one_hot))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"When `num_oov_indices=0` all "
                                                             r"inputs should be in vocabulary"):
        model(tf.constant([["medium"]]))
    model.save(tmp_path / "closed.keras")
    spec = {"endpoints": [{"name": "serve", "method": "call",
                           "inputs": [{"name": "size", "shape": [None, 1],
                                       "dtype": "string"}]}]}
    result = export(launcher, tmp_path / "closed.keras", spec, repo)
    sizes = [value.decode() for log in read_warmup(result.path)
             for value in tf.make_ndarray(log.predict_log.request.inputs["size"]).ravel()]
    assert len(sizes) == 1 + 4 + 1  # serve at batch sizes 1 and 4, serving_default at 1
    assert set(sizes) <= set(WORDS)
