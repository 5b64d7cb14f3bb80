"""Broken models and bad inputs that must not pass as verified, on real exports: non-finite
outputs, versions beyond TF Serving's int64, random-number state in fingerprints, and messages
that name the wrong dtype. (The checks that need no model are in unit/test_export_faults.py.)"""

from __future__ import annotations

import json

import pytest
from support.exports import export
from support.specs import SEQUENTIAL_SPEC

from shipyard.core.errors import SpecError, VerificationError
from shipyard.core.spec import parse_spec


def test_a_version_beyond_int64_is_refused_before_anything_is_written(cli, models, repo,
                                                                      tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SEQUENTIAL_SPEC))  # JSON is YAML
    result = cli("export", str(models.path("sequential")), "--spec", str(spec), "--repo",
                 str(repo), "--name", "m", "--version", "99999999999999999999999")
    assert result.exit_code == 2, result.output
    assert "--version: 99999999999999999999999 is not a valid version" in result.stderr
    assert not repo.exists() or not any(repo.rglob("saved_model.pb"))


def test_a_model_that_answers_nan_is_refused_naming_endpoint_and_output(launcher, models, repo):
    with pytest.raises(VerificationError, match=r"endpoint 'serve' output 'logits': the original "
                                                r"model answers NaN or Inf \(2 of 2 values, batch "
                                                r"1\).*nothing was published.*allow_non_finite: "
                                                r"true"):
        export(launcher, models.path("nan"), SEQUENTIAL_SPEC, repo)
    assert not (repo / "m").exists() or not any(p.name.isdigit() for p in (repo / "m").iterdir())

    allowed = export(launcher, models.path("nan"), {**SEQUENTIAL_SPEC, "allow_non_finite": True},
                     repo)
    assert allowed.version == 1  # NaN on both sides is the same answer when it is meant


def test_the_random_number_state_is_not_fingerprinted(launcher, models, tmp_path):
    """An unseeded Dropout draws its SeedGenerator state from Python's `random` on load: each
    process exporting one trained model holds another state. It must register once. Each
    register exports (steps.export.stage_export, as `shipyard export` does) after its own
    seed, so the pair proves both: one fingerprint, and one version reused."""
    import random

    import keras
    import numpy as np

    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    path = models.path("dropout")

    def seed_state(seed: int):
        random.seed(seed)
        layer = keras.saving.load_model(path).get_layer("dropout")
        return np.asarray(layer.seed_generator.state).tolist()

    assert seed_state(11) != seed_state(97)  # the premise: two processes, two states

    location = RegistryLocation.resolve(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = []
    for seed in (11, 97):
        random.seed(seed)
        runs.append(register_model(ExportRequest(model=path, spec=parse_spec(SEQUENTIAL_SPEC),
                                                 repo=tmp_path / "registered", name="dropout"),
                                   location, launch_verifier=launcher))
    assert runs[0].fingerprint == runs[1].fingerprint
    assert [r.version for r in runs] == [1, 1]
    assert [r.reused for r in runs] == [False, True]


def test_a_wrong_dtype_is_named_in_the_error(launcher, models, repo):
    spec = {"endpoints": [{"name": "serve", "method": "call", "inputs": [
        {"x1": {"shape": [None, 3], "dtype": "string"},
         "color": {"shape": [None, 1], "dtype": "string"}}]}]}
    # Tracing accepts strings (the graph is built); calling the model on them fails.
    with pytest.raises(SpecError, match=r"endpoint 'serve': the original model fails on inputs "
                                        r"generated from the declared signature \(batch 1\).*"
                                        r"Input\(s\) \['x1', 'color'\] are declared as strings: "
                                        r"if the model parses them .* declare them with "
                                        r"`tf_example`; if it takes numbers, declare their dtype"):
        export(launcher, models.path("functional"), spec, repo)
