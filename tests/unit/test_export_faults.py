"""Bad inputs an export must refuse before any model is loaded: versions beyond TF Serving's
int64, and a spec whose every problem is reported at once. (The broken models are in
integration/test_export_faults.py.)"""

from __future__ import annotations

import pytest
from support.specs import SEQUENTIAL_SPEC

from shipyard.core.errors import SpecError, UsageError
from shipyard.core.names import MAX_VERSION, validate_version
from shipyard.core.spec import parse_spec


def test_versions_are_int64_like_tf_servings():
    assert validate_version(MAX_VERSION) == 2**63 - 1
    with pytest.raises(UsageError, match=r"^version: 9223372036854775808 is not a valid "
                                         r"version. Expected an integer from 1 to "
                                         r"9223372036854775807 \(TF Serving's versions are int64\)"):
        validate_version(2**63)


def test_a_bad_default_endpoint_is_reported_with_the_other_problems():
    with pytest.raises(SpecError, match=r"\(2 problem\(s\)\):\n  - tolerance.atol: .*\n  - "
                                        r"default_endpoint: 'nope' is not an endpoint; use one "
                                        r"of \['serve'\]"):
        parse_spec({**SEQUENTIAL_SPEC, "default_endpoint": "nope", "tolerance": {"atol": -1}})
