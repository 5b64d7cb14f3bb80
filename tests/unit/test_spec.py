"""The export spec: validation and error messages (pure: no TensorFlow)."""

from __future__ import annotations

import re

import pytest

from shipyard.core.errors import SpecError, UsageError
from shipyard.core.spec import load_spec, parse_spec

SERVE = {"name": "serve", "method": "call", "training": False,
         "inputs": [{"x1": {"shape": [None, 3], "dtype": "float32"},
                     "color": {"shape": [None, 1], "dtype": "string"}}]}
EMBED = {"name": "embed", "method": "embed",
         "inputs": [{"name": "features", "shape": [None, 3], "dtype": "float32"}]}


def spec_with(**changes):
    data = {"endpoints": [SERVE, EMBED],
            "variable_collections": [{"name": "optimizer_variables", "select": "optimizer"}],
            "default_endpoint": "serve", "tolerance": {"atol": 1e-5, "rtol": 1e-5}}
    data.update(changes)
    return data


def test_the_documented_example_parses():
    spec = parse_spec(spec_with())
    assert [e.name for e in spec.endpoints] == ["serve", "embed"]
    assert spec.default.name == "serve"
    assert [n for n, _ in spec.endpoints[0].signature_inputs()] == ["x1", "color"]
    assert [n for n, _ in spec.endpoints[1].signature_inputs()] == ["features"]
    assert spec.variable_collections[0].select == "optimizer"


def test_default_endpoint_defaults_to_the_first():
    spec = parse_spec(spec_with(default_endpoint=None, endpoints=[EMBED, SERVE]))
    assert spec.default.name == "embed"
    assert spec.normalized()["default_endpoint"] == "embed"


def test_unnamed_tensors_get_positional_names():
    spec = parse_spec({"endpoints": [{
        "name": "serve", "method": "call",
        "inputs": [{"shape": [None, 2], "dtype": "float32"},
                   [{"shape": [None], "dtype": "int64"}, {"shape": [None], "dtype": "int64",
                                                         "name": "ids"}]]}]})
    assert [n for n, _ in spec.endpoints[0].signature_inputs()] == ["input_0", "input_1_0", "ids"]


def test_regex_selection_is_accepted_and_checked():
    spec = parse_spec(spec_with(variable_collections=[{"name": "dense",
                                                       "select": {"regex": "dense.*kernel"}}]))
    assert spec.variable_collections[0].select.regex == "dense.*kernel"
    with pytest.raises(SpecError, match=r"variable_collections\[0\]\.select\.regex: '\(' is not "
                                        r"a valid regular expression"):
        parse_spec(spec_with(variable_collections=[{"name": "v", "select": {"regex": "("}}]))


@pytest.mark.parametrize("changes, message", [
    ({"endpoints": []}, r"endpoints: List should have at least 1 item"),
    ({"endpoints": [{**SERVE, "inputs": [{"x1": {"shape": [None, 3], "dtype": "float33"}}]}]},
     r"endpoints\[0\]\.inputs\[0\]\.x1\.dtype: Input should be 'float16'.*'string' "
     r"\(got 'float33'\)"),
    ({"endpoints": [{**EMBED, "training": True}]},
     r"endpoints\[0\]: training is only accepted with method 'call'"),
    ({"endpoints": [SERVE, {**EMBED, "name": "serve"}]},
     r"names must be unique; \['serve'\] appear more than once"),
    ({"endpoints": [{**SERVE, "name": "serving_default"}]},
     r"endpoints\[0\]\.method: an endpoint named 'serving_default' is a SavedModel source's "
     r"own serving_default shipped as it is, so its method is serving_default \(got 'call'\)"),
    ({"endpoints": [{**SERVE, "name": "variables"}]},
     r"endpoints\[0\]\.name: 'variables' is reserved"),
    ({"endpoints": [{**SERVE, "name": "../x"}]},
     r"endpoints\[0\]\.name: String should match pattern"),
    ({"default_endpoint": "predict"},
     r"default_endpoint 'predict' is not an endpoint; use one of \['serve', 'embed'\]"),
    ({"variable_collections": [{"name": "v", "select": "optimiser"}]},
     r"variable_collections\[0\]\.select: Input should be 'trainable', 'non_trainable', 'all' "
     r"or 'optimizer' \(got 'optimiser'\)"),
    ({"tolerance": {"atol": -1}}, r"tolerance\.atol: Input should be greater than or equal to 0"),
    ({"endpoints": [{**EMBED, "inputs": [{"shape": [-1, 3], "dtype": "float32"}]}]},
     r"endpoints\[0\]\.inputs\[0\]\.shape: dimensions must be >= 0; write null \(not -1\)"),
    ({"endpoints": [{**SERVE, "inputs": [{"x1": {"shape": [None], "dtype": "float32",
                                                 "name": "other"}}]}]},
     r"input 'x1' also says name: 'other'; in a dict the key is the signature input name"),
    ({"tolerance": {"atl": 1}}, r"tolerance\.atl: unknown field: remove it or correct its spelling"),
    ({"endpoints": [{**SERVE, "inputs": [7]}]},
     r"endpoints\[0\]\.inputs\[0\]: expected a tensor \{shape, dtype\[, name\]\}, a dict of "
     r"tensors or a list of tensors \(got 7\)"),
    ({"endpoints": [{**EMBED, "inputs": [{"name": "a", "shape": [None], "dtype": "float32"},
                                         {"name": "a", "shape": [None], "dtype": "float32"}]}]},
     r"signature input names must be unique; \['a'\]"),
    ({"endpoints": [{**EMBED, "method": "../x"}]},
     r"endpoints\[0\]\.method: a method is named the way Python names attributes \(letters, "
     r"digits and _, not starting with a digit\): call, __call__, another method of the model, "
     r"or a SavedModel's signature or restored function \(got '\.\./x'\)"),
    ({"endpoints": [{**EMBED, "method": "2call"}]},
     r"endpoints\[0\]\.method: a method is named the way Python names attributes .* \(got "
     r"'2call'\)"),
    ({"endpoints": [{**EMBED, "method": "__init__"}]},
     r"endpoints\[0\]\.method: of Python's special methods only __call__ can be served; name "
     r"the model's method instead, e\.g\. call \(got '__init__'\)"),
    ({"reusable": "maybe"}, r"reusable: Input should be a valid boolean, unable to interpret input \(got 'maybe'\)"),
    ({"reusable": True, "endpoints": [SERVE, {**EMBED, "name": "regularization_losses"}]},
     r"reusable: TF Hub's interface needs the attribute names \['regularization_losses'\], "
     r"which an endpoint or variable collection takes; rename it"),
])
def test_invalid_specs_name_the_field_and_the_fix(changes, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_with(**changes), source="spec.yaml")


@pytest.mark.parametrize("method", ["__call__", "_serve_features", "serving_default", "call"])
def test_method_accepts_call_and_restored_attribute_names(method):
    # TF Hub's reusable interface is `__call__`; a SavedModel's restored functions may start
    # with an underscore.
    spec = parse_spec({"endpoints": [{**EMBED, "method": method}]})
    assert spec.endpoints[0].method == method


def test_reusable_defaults_to_false_and_is_in_the_normalized_spec():
    assert parse_spec(spec_with()).reusable is False
    spec = parse_spec(spec_with(reusable=True))
    assert spec.reusable is True
    assert spec.normalized()["reusable"] is True
    # Without reusable, the name is free (the attribute is only added with the interface).
    assert parse_spec(spec_with(endpoints=[SERVE, {**EMBED, "name": "regularization_losses"}]))


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("endpoints:\n  - name: serve\n    method: call\n    inputs: [{shape: [null], dtype: nope}]\n")
    with pytest.raises(SpecError, match=rf"(?s){re.escape(str(path))}: the export spec is invalid.*inputs\[0\]\.dtype"):
        load_spec(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match=r"^spec: .*missing\.yaml does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: [\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match=r"expected a mapping with an 'endpoints' list"):
        load_spec(scalar)


def test_normalized_json_is_stable_and_includes_defaults():
    a = parse_spec(spec_with(tolerance={"atol": 1e-5}))
    b = parse_spec(spec_with(tolerance={"rtol": 1e-5, "atol": 1e-5}))
    assert a.normalized_json() == b.normalized_json()
