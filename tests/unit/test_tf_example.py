"""Serialized tf.Example inputs (`tf_example`) and TF Serving's Classify/Regress signatures
(`kind: classify|regress`) as the spec declares them: what they imply, what is refused, and
that a kind change breaks clients. (Exports and serving: integration/test_tf_example.py.)"""

from __future__ import annotations

import pytest
from support.specs import FEATURES, kinds_spec

from shipyard.core.errors import SpecError
from shipyard.core.signatures import breaking_changes
from shipyard.core.spec import parse_spec


def test_a_tf_example_input_implies_a_vector_of_strings_and_kinds_imply_the_contract():
    spec = parse_spec(kinds_spec())
    serve, classify, regress = spec.endpoints
    assert serve.signature_inputs()[0][0] == "examples"
    decl = serve.examples_input()
    assert (decl.shape, decl.dtype) == ([None], "string")
    assert decl.tf_example["color"].default == ""
    assert classify.signature_inputs()[0][0] == "inputs"  # TF Serving's name, not declared
    assert (serve.method_name, classify.method_name, regress.method_name) == (
        "tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
    variable = parse_spec({"endpoints": [{"name": "s", "method": "call", "inputs": [
        {"tf_example": {"tokens": {"shape": [None], "dtype": "int64", "default": 0}}}]}]})
    assert variable.endpoints[0].inputs[0].tf_example["tokens"].variable_length


@pytest.mark.parametrize("endpoint, message", [
    ({"kind": "classify", "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]},
     r"endpoints\[0\]: a classify endpoint takes one input of serialized tf.Examples"),
    ({"kind": "regress", "inputs": [{"name": "examples", "tf_example": FEATURES}]},
     r"endpoints\[0\]: a regress endpoint's input is named 'inputs' by TF Serving's contract; "
     r"remove name: 'examples'"),
    ({"classes": ["a"], "inputs": [{"tf_example": FEATURES}]},
     r"`output` and `classes` belong to kind classify or regress"),
    ({"kind": "regress", "classes": ["a"], "inputs": [{"tf_example": FEATURES}]},
     r"`classes` belongs to kind classify"),
    ({"inputs": [{"tf_example": {"x": {"shape": [3], "dtype": "float64"}}}]},
     r"endpoints\[0\]\.inputs\[0\]\.tf_example\.x\.dtype: Input should be 'float32', 'int64' "
     r"or 'string'"),
    ({"inputs": [{"tf_example": {"x": {"shape": [2, None], "dtype": "int64"}}}]},
     r"tf_example\.x: only the first dimension of a feature may be null"),
    ({"inputs": [{"tf_example": {"x": {"shape": [1], "dtype": "float32", "default": "a"}}}]},
     r"tf_example\.x: default 'a' does not match dtype float32"),
    ({"inputs": [{"tf_example": FEATURES, "shape": [None, 1]}]},
     r"a tf_example input is a vector of serialized examples, shape \[null\] and dtype string"),
    ({"inputs": [{"features": {"tf_example": FEATURES, "dtype": "string", "shape": [None]}}]},
     r"tf_example declares a whole argument"),
])
def test_bad_tf_example_and_kind_declarations_name_the_field_and_the_fix(endpoint, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"endpoints": [{"name": "e", "method": "call", **endpoint}]})


def test_a_kind_change_breaks_clients():
    tensor = {"dtype": "string", "shape": [None]}
    old = {"s": {"method_name": "tensorflow/serving/predict", "inputs": {"inputs": tensor},
                 "outputs": {"scores": {"dtype": "float32", "shape": [None, 3]}}}}
    new = {"s": dict(old["s"], method_name="tensorflow/serving/classify")}
    assert breaking_changes(old, new) == [
        "signature 's': kind changed predict -> classify (method name "
        "tensorflow/serving/predict -> tensorflow/serving/classify)"]
