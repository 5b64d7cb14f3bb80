"""steps.drift, reconcile's pure comparison: plain views in, drift items and repairs out.
(Against a real MLflow server, real directories and the TF Serving double:
integration/test_reconcile.py.)"""

from __future__ import annotations

from shipyard.steps.drift import (
    ConfigView,
    PublishedVersion,
    RegistryView,
    Repair,
    RepositoryView,
    ServerView,
    find_drift,
)

TAGS = {"shipyard.fingerprint": "sha256:f1", "shipyard.endpoints": "serve"}


def published(*versions: int, corrupt: tuple[int, ...] = ()) -> RepositoryView:
    return RepositoryView({v: PublishedVersion(f"sha256:f{v}",
                                               {**TAGS, "shipyard.fingerprint": f"sha256:f{v}"},
                                               ("variables/x: missing",) if v in corrupt else ())
                           for v in versions})


def registered(aliases: dict[str, int], *versions: int) -> RegistryView:
    return RegistryView(aliases, {v: {**TAGS, "shipyard.fingerprint": f"sha256:f{v}",
                                      "shipyard.serving_version": str(v),
                                      "shipyard.published": "true"} for v in versions})


SYNCED = (registered({"champion": 1, "canary": 2}, 1, 2), published(1, 2),
          ConfigView((1, 2), {"stable": 1, "canary": 2}))


def drift(registry=SYNCED[0], repo=SYNCED[1], config=SYNCED[2], servers=()):
    return {(item.kind, item.subject): item
            for item in find_drift("m", registry, repo, config, list(servers))}


def test_agreement_is_no_drift():
    assert drift(servers=[ServerView("s:1", {1: "AVAILABLE", 2: "AVAILABLE", 0: "END"})]) == {}


def test_labels_follow_aliases_onto_intact_versions_only():
    moved = drift(registry=registered({"champion": 2, "canary": 2}, 1, 2))
    assert moved[("champion_stable", "label stable")].repair == Repair("push", "stable", 2)
    corrupt = drift(registry=registered({"champion": 2, "canary": 2}, 1, 2),
                    repo=published(1, 2, corrupt=(2,)))
    assert corrupt[("champion_stable", "label stable")].repair is None
    assert corrupt[("checksum_failed", "version 2")].says["registry"] == {
        "aliases": ["canary", "champion"]}


def test_champion_is_never_set_but_a_canary_without_alias_is_dropped():
    items = drift(registry=registered({}, 1, 2))
    assert items[("champion_stable", "label stable")].repair is None
    assert "reconcile never moves champion" in items[("champion_stable", "label stable")].fix
    assert items[("canary_label", "label canary")].repair == Repair("drop_label", "canary")


def test_each_side_against_the_others():
    registry = registered({"champion": 1, "candidate": 5}, 1, 2, 4)
    registry.versions[2].pop("shipyard.endpoints")
    registry.versions[5] = {}  # registered, never published
    repo = published(1, 2, 3)  # 3 has no registry version; 4 has no directory
    items = drift(registry, repo, ConfigView((1, 2, 3), {"stable": 1, "canary": 2}),
                  [ServerView("s:1", {1: "AVAILABLE", 2: "LOADING", 9: "AVAILABLE"})])
    assert sorted(items) == [
        ("alias_unpublished", "alias candidate"),
        ("canary_label", "label canary"),
        ("directory_unregistered", "version 3"),
        ("registered_without_directory", "version 4"),
        ("server_extra_version", "server s:1 version 9"),
        ("server_missing_version", "server s:1 version 2"),
        ("server_missing_version", "server s:1 version 3"),
        ("tags_missing", "version 2"),
        ("unlabelled_version", "version 3")]
    assert items[("tags_missing", "version 2")].repair == Repair(
        "complete_tags", version=2, tags={"shipyard.endpoints": "serve"})
    assert items[("unlabelled_version", "version 3")].repair == Repair("push", "stable", 1)
    assert items[("server_missing_version", "server s:1 version 2")].says["server"][
        "state"] == "LOADING"
    assert not any(item.fixable for kind, item in items.items()
                   if kind[0] in ("alias_unpublished", "directory_unregistered",
                                  "registered_without_directory", "server_extra_version",
                                  "server_missing_version"))


def test_a_tag_that_differs_is_never_overwritten_nor_completed_from_that_manifest():
    registry = registered({"champion": 1, "canary": 2}, 1, 2)
    registry.versions[1]["shipyard.fingerprint"] = "sha256:other"
    registry.versions[1].pop("shipyard.published")
    items = drift(registry)
    assert list(items) == [("tags_differ", "version 1")]
    assert items[("tags_differ", "version 1")].repair is None
    assert items[("tags_differ", "version 1")].says["registry"]["tags"] == {
        "shipyard.fingerprint": "sha256:other"}
