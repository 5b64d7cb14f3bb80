"""models.config through TF Serving's protos, the label-move plan and the gc decision (pure)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from shipyard.core.errors import ShipyardError, UsageError
from shipyard.serving.config import (
    ModelServing,
    model_names,
    model_serving,
    parse_config,
    render_config,
    with_model,
)
from shipyard.serving.plan import label_move_steps, label_removal_steps
from shipyard.serving.protos import model_server_config_pb2
from shipyard.steps.gc import plan_gc

OTHER_MODEL = """
model_config_list {
  config {
    name: "other"
    base_path: "/srv/other"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    logging_config { sampling_config { sampling_rate: 0.5 } }
  }
}
"""


def test_entry_is_built_with_the_protos_and_other_models_are_untouched():
    config = parse_config(OTHER_MODEL)
    updated = with_model(config, "m", "/repo/m", ModelServing((1, 2), {"stable": 1, "canary": 2}))
    text = render_config(updated)
    reparsed = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, reparsed)  # what TF Serving does with the file
    assert model_names(reparsed) == ["other", "m"]
    other, entry = reparsed.model_config_list.config
    assert other == parse_config(OTHER_MODEL).model_config_list.config[0]
    assert entry.base_path == "/repo/m" and entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert model_serving(reparsed, "m") == ModelServing((1, 2), {"stable": 1, "canary": 2})
    assert model_serving(reparsed, "absent") is None


def test_entry_keeps_its_place_and_can_be_removed():
    config = with_model(parse_config(OTHER_MODEL), "m", "/repo/m", ModelServing((1,), {}))
    config = with_model(config, "z", "/repo/z", ModelServing((3,), {"stable": 3}))
    config = with_model(config, "m", "/repo/m", ModelServing((2,), {"stable": 2}))
    assert model_names(config) == ["other", "m", "z"]
    assert model_names(with_model(config, "m", "/repo/m", None)) == ["other", "z"]


def test_a_file_that_is_not_a_model_server_config_is_named():
    with pytest.raises(ShipyardError, match=r"/srv/models.config is not a text-format "
                                            r"ModelServerConfig: .*Fix or remove the file"):
        parse_config("model_config_list { bogus: 1 }", source="/srv/models.config")


def test_first_label_loads_the_version_before_labelling_it():
    assert label_move_steps(None, "stable", 1) == [ModelServing((1,), {}),
                                                   ModelServing((1,), {"stable": 1})]


def test_a_label_in_use_moves_in_two_steps_then_the_old_version_is_dropped():
    current = ModelServing((1,), {"stable": 1})
    assert label_move_steps(current, "stable", 2) == [
        ModelServing((1, 2), {"stable": 1}),   # both loaded, label unchanged
        ModelServing((1, 2), {"stable": 2}),   # label moves
        ModelServing((2,), {"stable": 2}),     # version 1 is needed by no label
    ]


def test_canary_then_promotion_keeps_what_a_label_still_needs():
    current = ModelServing((1,), {"stable": 1})
    canary = label_move_steps(current, "canary", 2)
    assert canary[-1] == ModelServing((1, 2), {"stable": 1, "canary": 2})
    promoted = label_move_steps(canary[-1], "stable", 2)
    assert promoted == [ModelServing((1, 2), {"stable": 2, "canary": 2}),
                        ModelServing((2,), {"stable": 2, "canary": 2})]


def test_pointing_a_label_where_it_already_points_changes_nothing():
    assert label_move_steps(ModelServing((3,), {"stable": 3}), "stable", 3) == []


def test_dropping_the_canary_unloads_its_version_unless_stable_needs_it():
    both = ModelServing((1, 2), {"stable": 1, "canary": 2})
    assert label_removal_steps(both, "canary") == [ModelServing((1,), {"stable": 1})]
    promoted = ModelServing((2,), {"stable": 2, "canary": 2})
    assert label_removal_steps(promoted, "canary") == [ModelServing((2,), {"stable": 2})]


def test_dropping_the_last_label_keeps_the_versions_and_an_absent_label_changes_nothing():
    assert label_removal_steps(ModelServing((3,), {"canary": 3}), "canary") == [
        ModelServing((3,), {})]
    assert label_removal_steps(ModelServing((3,), {"stable": 3}), "canary") == []
    assert label_removal_steps(None, "canary") == []


def test_gc_keeps_newest_labelled_loaded_and_aliased_versions():
    plan = plan_gc([1, 2, 3, 4, 5, 6, 7], ModelServing((2, 3), {"stable": 2}),
                   {"champion": 2, "candidate": 5, "canary": 4}, keep_newest=2)
    assert plan.remove == (1,)
    assert plan.keep == {2: ["label stable", "loaded by models.config", "alias champion"],
                         3: ["loaded by models.config"], 4: ["alias canary"],
                         5: ["alias candidate"], 6: ["among the newest 2"],
                         7: ["among the newest 2"]}


def test_gc_keeping_more_than_there_are_removes_nothing():
    plan = plan_gc([1, 2, 3], None, {}, keep_newest=5)
    assert plan.remove == () and sorted(plan.keep) == [1, 2, 3]


def test_gc_with_keep_zero_and_nothing_pointing_removes_everything():
    assert plan_gc([1, 2], None, {}, keep_newest=0).remove == (1, 2)


def test_gc_refuses_a_negative_keep():
    with pytest.raises(UsageError, match=r"^keep: expected 0 or more versions to keep, got -1"):
        plan_gc([1], None, {}, keep_newest=-1)
