"""The MLflow descriptions of versions and registered models (core/descriptions.py)."""

from __future__ import annotations

import dataclasses
import json

from support.manifests import bare_manifest

from shipyard.core.descriptions import lineage, model_description, version_description

MANIFEST = dataclasses.replace(
    bare_manifest([]), fingerprint="sha256:abc", default_endpoint="serve",
    parity={"serve": {"max_abs_error": 0.0, "atol": 1e-5, "rtol": 1e-5},
            "classify": {"max_abs_error": 2e-7, "atol": 1e-5, "rtol": 0.0}},
    verification={"runtimes": {"2.19": {"status": "passed"}}},
    source={"path": "/models/churn.keras", "format": "keras"})


def test_a_version_says_what_was_verified_and_where_it_came_from():
    text = version_description(MANIFEST, "/repo/churn/3")
    assert text.splitlines() == [
        "**Verified by shipyard** before it was published.", "",
        "- Endpoints: `classify`, `serve` (default `serve`).",
        "- Parity of `classify` with the source model: max abs error 2e-07 (atol 1e-05, "
        "rtol 0.0).",
        "- Parity of `serve` with the source model: max abs error 0.0 (atol 1e-05, rtol 1e-05).",
        "- Serving runtime TensorFlow 2.19: passed.",
        "- Source: keras at `/models/churn.keras`.",
        "- Fingerprint: `sha256:abc`.",
        "- Repository: `/repo/churn/3`."]


def test_a_copy_also_names_its_lineage():
    source = {"registry": "http://staging:5000", "name": "churn", "version": 3, "run_id": "r1"}
    text = version_description(MANIFEST, "gs://prod/churn/1", source)
    assert text.endswith("- Copied from http://staging:5000: `churn` version 3 (run r1), byte "
                         "for byte; lineage in tag `shipyard.copied_from`.")
    assert lineage({"shipyard.copied_from": json.dumps(source)}, "shipyard.copied_from") == source
    assert lineage({"shipyard.copied_from": "not json"}, "shipyard.copied_from") is None
    assert lineage({}, "shipyard.copied_from") is None


def test_a_model_says_where_its_history_is():
    assert "`shipyard alias history churn`" in model_description("churn")
    assert "`shipyard.alias_log.*`" in model_description("churn")
