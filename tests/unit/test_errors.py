"""Errors as the library raises them (naming parameters, carrying documents) and as the CLI
shows them (naming flags)."""

from __future__ import annotations

import pickle

import pytest

from shipyard.core.errors import (
    GateError,
    RegistryUnavailableError,
    ShipyardError,
    UsageError,
    cli_message,
)


@pytest.mark.parametrize(("param", "message", "shown"), [
    ("against", "against: version 3 is the version being validated",
     "--against: version 3 is the version being validated"),
    ("max_abs_error", "max_abs_error: expected 0 or more, got -1.0",
     "--max-abs-error: expected 0 or more, got -1.0"),
    ("examples", "examples data/*.csv: no file matches; check the path or glob",
     "--examples data/*.csv: no file matches; check the path or glob"),
    ("agreement_output", "agreement_output names the outputs the agreement gate covers; "
     "pass --min-agreement too", "--agreement-output names the outputs the agreement gate "
     "covers; pass --min-agreement too"),
])
def test_cli_message_shows_the_flag_of_the_parameter_a_message_starts_with(param, message,
                                                                         shown):
    assert cli_message(UsageError(message, param=param)) == shown


@pytest.mark.parametrize(("param", "message"), [
    (None, "keep: a message without a param stays as it is"),
    ("name", "namespace shipyard: only a whole parameter name is a prefix"),
    ("version", "m version 3: the parameter is not where the message starts"),
])
def test_cli_message_leaves_other_messages_unchanged(param, message):
    assert cli_message(ShipyardError(message, param=param)) == message


def test_param_and_document_are_fields_of_every_error():
    plain = ShipyardError("x")
    assert plain.param is None and plain.document is None and str(plain) == "x"
    gate = GateError("validation gates failed", document={"passed": False})
    assert gate.document == {"passed": False} and gate.exit_code == 8
    down = RegistryUnavailableError("MLflow is unreachable", document={"passed": True})
    assert down.document == {"passed": True} and down.exit_code == 6
    # Pickled (as Beam and KFP may), an error keeps its message and fields.
    copy = pickle.loads(pickle.dumps(UsageError("keep: bad", param="keep", document={"a": 1})))
    assert (type(copy), str(copy), copy.param, copy.document) == \
        (UsageError, "keep: bad", "keep", {"a": 1})


def test_a_step_names_the_parameter_not_the_flag(tmp_path):
    from shipyard.repository import open_repository
    from shipyard.steps.gc import collect_garbage

    repo = open_repository(tmp_path / "repo")
    with pytest.raises(UsageError) as bad_keep:
        collect_garbage(repo, "m", -1, read_aliases=None)
    assert bad_keep.value.param == "keep"
    assert str(bad_keep.value) == "keep: expected 0 or more versions to keep, got -1"
    assert cli_message(bad_keep.value) == "--keep: expected 0 or more versions to keep, got -1"

    with pytest.raises(UsageError, match=r"^name: '\.\./x' is not a valid model name") as bad:
        collect_garbage(repo, "../x", 1, read_aliases=None)
    assert bad.value.param == "name"
    assert cli_message(bad.value).startswith("--name: '../x' is not a valid model name")


def test_an_incomplete_canary_rollback_keeps_the_class_and_document_of_its_cause():
    from shipyard.steps.canary import _roll_back

    class Failing:
        def drop(self, label):
            raise ShipyardError("models.config is read-only")

        def clear_canary(self, name, *, reason, gates):
            raise RegistryUnavailableError("MLflow is unreachable")

    validation = {"examples": 4, "against": 1, "agreement": {}, "failures": ["f"],
                  "passed": False, "thresholds": {"min_agreement": 0.9}}
    cause = GateError("validation gates failed", document=validation)
    with pytest.raises(GateError, match=r"The rollback is incomplete") as raised:
        _roll_back(Failing(), Failing(), "m", 2, 1, cause)
    assert raised.value.document is validation and raised.value.__cause__ is cause
