"""The pure decisions of shipping a SavedModel source whole (exporter/whole.py): what is kept,
what is added and how, what is refused, and what a re-save would lose."""

from __future__ import annotations

import pytest

from shipyard.core.errors import SpecError
from shipyard.core.spec import parse_spec
from shipyard.exporter.whole import (
    COPIED,
    RESAVED,
    SIGNATURE_DEFS_ADDED,
    SourceGraph,
    extra_endpoints,
    lost_in_resave,
    plan_shipping,
    refuse_losses,
)

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"


def signature(method_name: str, inputs: dict[str, str], outputs: tuple[str, ...]) -> dict:
    return {"method_name": method_name,
            "inputs": {name: {"dtype": dtype, "shape": [None]} for name, dtype in inputs.items()},
            "outputs": {name: {"dtype": "float32", "shape": [None]} for name in outputs}}


def graph(tf2: bool = True, **signatures) -> SourceGraph:
    return SourceGraph(signatures=signatures, tf2=tf2, functions=frozenset({"serve"}),
                       attributes=frozenset({"serve", "variables", "signatures"}),
                       assets=frozenset({"vocab.txt"}), variables=4)


SOURCE = graph(serving_default=signature(PREDICT, {"examples": "string"}, ("probs",)),
               classify=signature(CLASSIFY, {"inputs": "string"}, ("classes", "scores")))
FEATURES = {"x": {"shape": [], "dtype": "float32"}}
AS_IS = {"name": "serving_default", "method": "serving_default",
         "inputs": [{"name": "examples", "tf_example": FEATURES}]}


def spec(*endpoints, **more):
    return parse_spec({"endpoints": list(endpoints), **more})


def test_endpoints_that_are_the_source_signatures_copy_it_as_it_is():
    shipping = plan_shipping(SOURCE, spec(AS_IS, {"name": "classify", "method": "classify",
                                                  "kind": "classify",
                                                  "inputs": [{"tf_example": FEATURES}]}))
    assert (shipping.renamed, shipping.wrapped, shipping.method_names) == ({}, {}, {})
    assert shipping.how(SOURCE) == COPIED


def test_a_renamed_signature_is_a_signature_def_in_a_tf1_graph_and_a_resave_in_tf2():
    renamed = spec({**AS_IS, "name": "serve"})
    tf1 = graph(tf2=False, **SOURCE.signatures)
    assert plan_shipping(tf1, renamed).renamed == {"serve": "serving_default"}
    assert plan_shipping(tf1, renamed).how(tf1) == SIGNATURE_DEFS_ADDED
    assert plan_shipping(SOURCE, renamed).how(SOURCE) == RESAVED


def test_a_classify_endpoint_over_a_predict_signature_is_a_new_function():
    shipping = plan_shipping(SOURCE, spec(AS_IS, {
        "name": "by_color", "method": "serving_default", "kind": "classify",
        "output": "probs", "inputs": [{"tf_example": FEATURES}]}))
    assert list(shipping.wrapped) == ["by_color"]
    assert shipping.wrapped["by_color"] == "a classify signature over 'serving_default' (predict)"
    assert shipping.how(SOURCE) == RESAVED


def test_a_restored_function_served_as_a_signature_is_a_new_function():
    shipping = plan_shipping(SOURCE, spec(AS_IS, {
        "name": "call_it", "method": "serve",
        "inputs": [{"x": {"shape": [None], "dtype": "float32"}}]}))
    assert shipping.wrapped == {"call_it": "'serve' is a restored function, not a signature"}


def test_variable_collections_need_a_resave():
    shipping = plan_shipping(SOURCE, spec(AS_IS, variable_collections=[
        {"name": "weights", "select": "trainable"}]))
    assert shipping.how(SOURCE) == RESAVED


@pytest.mark.parametrize("endpoint, message", [
    ({"name": "classify", "method": "serving_default", "kind": "classify", "output": "probs",
      "inputs": [{"tf_example": FEATURES}]},
     r"endpoints\[1\]: the source already has a signature 'classify', and this endpoint would "
     r"replace it \(a classify signature over 'serving_default' \(predict\)\)"),
    ({"name": "classify", "method": "classify",
      "inputs": [{"inputs": {"shape": [None], "dtype": "int64"}}]},
     r"endpoints\[1\]: the source already has a signature 'classify', .* takes 'inputs' as "
     r"string, the spec declares int64"),
])
def test_an_endpoint_that_would_replace_a_source_signature_is_refused(endpoint, message):
    with pytest.raises(SpecError, match=message):
        plan_shipping(SOURCE, spec(AS_IS, endpoint))


def test_a_default_endpoint_serving_default_cannot_answer_is_refused():
    other = {"name": "score", "method": "serve",
             "inputs": [{"x": {"shape": [None], "dtype": "float32"}}]}
    with pytest.raises(SpecError, match=r"default_endpoint: endpoint 'score' \(method 'serve', "
                                        r"kind predict\) takes \{'x': 'float32'\}, the source's "
                                        r"serving_default takes \{'examples': 'string'\}"):
        plan_shipping(SOURCE, spec(other))
    # The same inputs, but a new classify function: it cannot be the source's predict.
    source = graph(serving_default=signature(PREDICT, {"inputs": "string"}, ("probs",)))
    by_kind = {"name": "by_kind", "method": "serving_default", "kind": "classify",
               "output": "probs", "inputs": [{"tf_example": FEATURES}]}
    with pytest.raises(SpecError, match=r"default_endpoint: endpoint 'by_kind' \(method "
                                        r"'serving_default', kind classify\)"):
        plan_shipping(source, spec(by_kind))
    # As a second endpoint it is added beside serving_default, which keeps its method name.
    kept = plan_shipping(source, spec({**AS_IS, "inputs": [{"name": "inputs",
                                                            "tf_example": FEATURES}]}, by_kind))
    assert list(kept.wrapped) == ["by_kind"] and kept.method_names == {}


def test_a_source_without_serving_default_gets_the_default_endpoint_as_it():
    source = graph(tf2=False, predict=signature(PREDICT, {"x": "float32"}, ("y",)))
    shipping = plan_shipping(source, spec({"name": "predict", "method": "predict",
                                           "inputs": [{"x": {"shape": [None],
                                                             "dtype": "float32"}}]}))
    assert shipping.renamed == {"serving_default": "predict"}
    assert shipping.how(source) == SIGNATURE_DEFS_ADDED


def test_signatures_the_spec_does_not_name_are_called_with_inputs_from_their_specs():
    source = graph(serving_default=SOURCE.signatures["serving_default"],
                   transform_features=signature(PREDICT, {"examples": "string"}, ("x",)),
                   embed=signature(PREDICT, {"ids": "int64", "mask": "bool"}, ("e",)),
                   weird=signature(PREDICT, {"z": "complex64"}, ("w",)))
    extras, skipped = extra_endpoints(source, spec(AS_IS))
    by_name = {e.name: e for e in extras}
    assert sorted(by_name) == ["embed", "transform_features"]
    # One string input, and the spec declares one set of tf.Example features: examples.
    assert by_name["transform_features"].examples_input().tf_example.keys() == {"x"}
    assert [n for n, _ in by_name["embed"].signature_inputs()] == ["ids", "mask"]
    assert list(skipped) == ["weird"] and "cannot be generated" in skipped["weird"]


def test_what_a_resave_would_lose_is_named_and_refused():
    resaved = SourceGraph(signatures={"serving_default": {}}, tf2=True,
                          functions=frozenset(), attributes=frozenset({"variables"}),
                          assets=frozenset(), variables=3)
    lost = lost_in_resave(SOURCE, resaved)
    assert lost == ["signature 'classify'", "restored function 'serve'",
                    "attribute 'signatures'", "asset 'vocab.txt'", "1 of 4 variables"]
    shipping = plan_shipping(SOURCE, spec(AS_IS, {
        "name": "call_it", "method": "serve",
        "inputs": [{"x": {"shape": [None], "dtype": "float32"}}]}))
    assert "saving it again because TF1's loader" in _refusal(lost, plan_shipping(SOURCE, spec(
        AS_IS)), "TF1's loader misses 2 variables")
    with pytest.raises(SpecError, match=r"means saving it again to add call_it \('serve' is a "
                                        r"restored function, not a signature\), and the re-saved "
                                        r"SavedModel would lose signature 'classify', .*Ship the "
                                        r"source as it is"):
        refuse_losses(lost, shipping)
    assert lost_in_resave(SOURCE, SOURCE) == []


def _refusal(lost, shipping, because) -> str:
    with pytest.raises(SpecError) as refused:
        refuse_losses(lost, shipping, because)
    return str(refused.value)
