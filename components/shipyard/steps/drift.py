"""`shipyard reconcile`'s decisions: where the registry, the repository, models.config and the
TF Servings disagree about one model, and which disagreements are safe to repair. Pure: plain
views in, drift items out (the views are gathered, and the repairs made, by steps.reconcile).

Each disagreement is one `DriftItem`: its kind, what each side says, and the fix, a sentence
for the user. A fixable item also carries its `Repair`, which is all `--fix` may do:
- move a label of models.config to the version its alias names (`champion` -> `stable`,
  `canary` -> `canary`), or drop `canary` when no `canary` alias is set, as `shipyard push`
  does (steps.push: its two-step moves and its lock), and only onto a published version whose
  files match its checksums (and, with a trust key, whose signature verifies);
- complete the `shipyard.*` tags a registry version is missing, from its directory's manifest.
Nothing else is repaired: directories are never deleted, aliases (`champion` above all) never
moved, tags that disagree never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.core.vocabulary import (
    CANARY,
    CANARY_ALIAS,
    CHAMPION,
    PUBLISHED_TAG,
    SERVING_VERSION_TAG,
    STABLE,
)

# What TF Serving's GetModelStatus calls a version that answers requests.
AVAILABLE = "AVAILABLE"
# The labels that follow an alias, in the order --fix moves them.
LABEL_ALIASES = ((STABLE, CHAMPION), (CANARY, CANARY_ALIAS))

# The kinds of drift, as `kind` spells them (a public interface: scripts match on them).
CHAMPION_STABLE = "champion_stable"
CANARY_LABEL = "canary_label"
LABEL_UNPUBLISHED = "label_unpublished"
LABEL_NOT_LOADED = "label_not_loaded"
UNLABELLED_VERSION = "unlabelled_version"
ALIAS_UNPUBLISHED = "alias_unpublished"
DIRECTORY_UNREGISTERED = "directory_unregistered"
REGISTERED_WITHOUT_DIRECTORY = "registered_without_directory"
CHECKSUM_FAILED = "checksum_failed"
SIGNATURE_FAILED = "signature_failed"
TAGS_MISSING = "tags_missing"
TAGS_DIFFER = "tags_differ"
SERVER_EXTRA_VERSION = "server_extra_version"
SERVER_MISSING_VERSION = "server_missing_version"
KINDS = (CHAMPION_STABLE, CANARY_LABEL, LABEL_UNPUBLISHED, LABEL_NOT_LOADED,
         UNLABELLED_VERSION, ALIAS_UNPUBLISHED, DIRECTORY_UNREGISTERED,
         REGISTERED_WITHOUT_DIRECTORY, CHECKSUM_FAILED, SIGNATURE_FAILED, TAGS_MISSING,
         TAGS_DIFFER, SERVER_EXTRA_VERSION, SERVER_MISSING_VERSION)


@dataclass(frozen=True)
class PublishedVersion:
    """A version directory with shipyard.json."""

    fingerprint: str
    tags: dict[str, str]  # the shipyard.* tags its manifest determines (steps.reconcile)
    problems: tuple[str, ...] = ()  # checksum failures; () when every file matches
    # What fails in its signature against the trust key (a file, the missing signature,
    # another key); None when it verifies, or when no trust key was given.
    signature: str | None = None

    @property
    def intact(self) -> bool:
        """Its files match its checksums and (with a trust key) its signature verifies: a
        version --fix may move a label onto."""
        return not self.problems and self.signature is None


@dataclass(frozen=True)
class RepositoryView:
    published: dict[int, PublishedVersion]
    unpublished: dict[int, str] = field(default_factory=dict)  # numbered, yet not published: why


@dataclass(frozen=True)
class RegistryView:
    aliases: dict[str, int]
    versions: dict[int, dict[str, str]]  # every registered version -> its tags


@dataclass(frozen=True)
class ConfigView:
    """NAME's entry in models.config (no entry: nothing loaded, no labels)."""

    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerView:
    address: str
    states: dict[int, str]  # version -> GetModelStatus state (AVAILABLE, LOADING, END, ...)


@dataclass(frozen=True)
class Repair:
    """What --fix does for an item: `push` (label -> version), `drop_label` (label) or
    `complete_tags` (version, tags)."""

    action: str
    label: str | None = None
    version: int | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        """Items sharing a key share one repair: --fix makes it once."""
        return (self.action, self.label, self.version, tuple(sorted(self.tags.items())))


@dataclass(frozen=True)
class DriftItem:
    kind: str
    subject: str  # what the sides disagree about: "label stable", "version 3", ...
    says: dict[str, Any]  # side (registry, repository, config, server) -> what it says
    fix: str  # what to do about it; for a fixable item, what --fix does
    repair: Repair | None = None

    @property
    def fixable(self) -> bool:
        return self.repair is not None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "says": self.says,
                "fixable": self.fixable, "fix": self.fix}


def find_drift(name: str, registry: RegistryView, repo: RepositoryView, config: ConfigView,
               servers: list[ServerView]) -> list[DriftItem]:
    """Every disagreement between the four sides about NAME, in a fixed order."""
    sides = _Sides(name, registry, repo, config)
    items: list[DriftItem] = []
    items += _labels_against_aliases(sides)
    items += _config_against_repository(sides)
    items += _registry_against_repository(sides)
    items += _checksums(sides)
    items += _signatures(sides)
    for server in servers:
        items += _server_against_config(sides, server)
    return items


@dataclass(frozen=True)
class _Sides:
    name: str
    registry: RegistryView
    repo: RepositoryView
    config: ConfigView

    def intact(self, version: int) -> bool:
        found = self.repo.published.get(version)
        return found is not None and found.intact

    def on_disk(self, version: int) -> str:
        """What the repository says about VERSION, in a few words."""
        found = self.repo.published.get(version)
        if found is not None:
            return ("published, fails its checksums" if found.problems else
                    "published, fails its signature" if found.signature is not None else
                    "published")
        return self.repo.unpublished.get(version, "no directory")

    def label_repair(self, label: str, alias: str) -> tuple[Repair | None, str]:
        """How LABEL comes to follow ALIAS, and the sentence saying it (or why it cannot)."""
        target = self.registry.aliases.get(alias)
        current = self.config.labels.get(label)
        if target is None and label == CANARY:
            return (Repair("drop_label", label=label),
                    f"--fix drops label {label} (no {alias} alias is set) and unloads the "
                    f"versions no other label needs, as `shipyard push` does, under "
                    f"{self.name}'s serving lock")
        if target is None:
            return None, (f"no {alias} alias is set and reconcile never moves {alias}: if "
                          f"version {current} is right, point {alias} at it (`shipyard alias "
                          f"set {self.name} {alias} {current} --force --reason ...`), then "
                          "run reconcile again")
        if not self.intact(target):
            return None, (f"{alias} names version {target}, which is {self.on_disk(target)}; "
                          "--fix moves labels only onto published versions whose files match "
                          "their checksums (and, with a trust key, whose signature verifies): "
                          f"restore version {target}'s directory, or move "
                          f"{alias} to an intact version (`shipyard alias set`), then run "
                          "reconcile --fix")
        return (Repair("push", label=label, version=target),
                f"--fix moves label {label} to version {target}, as `shipyard push --label "
                f"{label} --version {target}` does: loaded beside the old version first, the "
                f"label moved, unneeded versions unloaded, under {self.name}'s serving lock")


def _labels_against_aliases(sides: _Sides) -> list[DriftItem]:
    items = []
    for label, alias in LABEL_ALIASES:
        target = sides.registry.aliases.get(alias)
        current = sides.config.labels.get(label)
        if target == current:
            continue
        repair, fix = sides.label_repair(label, alias)
        items.append(DriftItem(
            CHAMPION_STABLE if label == STABLE else CANARY_LABEL, f"label {label}",
            {"registry": {"alias": alias, "version": target},
             "config": {"label": label, "version": current}}, fix, repair))
    return items


def _config_against_repository(sides: _Sides) -> list[DriftItem]:
    items = []
    config, aliases = sides.config, sides.registry.aliases
    for label, version in sorted(config.labels.items()):
        alias = dict(LABEL_ALIASES).get(label)
        repair, fix = (sides.label_repair(label, alias) if alias is not None
                       else (None, ""))
        if version not in sides.repo.published:
            items.append(DriftItem(
                LABEL_UNPUBLISHED, f"label {label}",
                {"config": {"label": label, "version": version},
                 "repository": {"version": version, "state": sides.on_disk(version)}},
                fix if repair is not None else
                (f"version {version} is not published, so TF Serving cannot load it: restore "
                 f"its directory, or point {alias or 'an alias'} at a published version "
                 "(`shipyard alias set`) and run reconcile --fix"), repair))
        elif version not in config.versions:
            if repair is not None and repair.version == version:
                fix = (f"--fix loads version {version} under label {label}, as `shipyard push "
                       f"--label {label} --version {version}` does")
            items.append(DriftItem(
                LABEL_NOT_LOADED, f"label {label}",
                {"config": {"label": label, "version": version,
                            "versions": list(config.versions)}},
                fix if repair is not None else
                (f"TF Serving refuses a label on a version it does not load: push label "
                 f"{label} to a published version (`shipyard push`)"), repair))
    followed = {aliases[alias] for _, alias in LABEL_ALIASES if alias in aliases}
    for version in config.versions:
        if version in config.labels.values() or version in followed:
            continue  # labelled, or a label is about to move onto it (an item above)
        champion = aliases.get(CHAMPION)
        repair = (Repair("push", label=STABLE, version=champion)
                  if champion is not None and sides.intact(champion) else None)
        items.append(DriftItem(
            UNLABELLED_VERSION, f"version {version}",
            {"config": {"version": version, "labels": dict(sorted(config.labels.items()))},
             "repository": {"version": version, "state": sides.on_disk(version)}},
            (f"--fix pushes label stable to champion's version {champion}, which unloads the "
             "versions no label points at, as `shipyard push` does" if repair is not None else
             f"models.config loads version {version} and no label points at it (a push cut "
             "short?); finish or repeat that push (`shipyard push`)"), repair))
    return items


def _registry_against_repository(sides: _Sides) -> list[DriftItem]:
    items = []
    registry, repo, name = sides.registry, sides.repo, sides.name
    for alias, version in sorted(registry.aliases.items()):
        marked = registry.versions.get(version, {}).get(PUBLISHED_TAG) == "true"
        if version not in repo.published and not marked:  # marked: the item below says it
            items.append(DriftItem(
                ALIAS_UNPUBLISHED, f"alias {alias}",
                {"registry": {"alias": alias, "version": version},
                 "repository": {"version": version, "state": sides.on_disk(version)}},
                f"restore {name} version {version}'s directory, or move {alias} to a "
                "published version (`shipyard alias set`); reconcile never moves aliases"))
    for version, found in sorted(repo.published.items()):
        tags = registry.versions.get(version)
        if tags is None:
            items.append(DriftItem(
                DIRECTORY_UNREGISTERED, f"version {version}",
                {"repository": {"version": version, "fingerprint": found.fingerprint},
                 "registry": {"version": None}},
                f"the registry has no version {version} of {name}: check that --tracking-uri/"
                "--registry-uri name the registry that registered it; if nothing needs the "
                "directory, remove it (`shipyard gc`). reconcile never deletes a directory"))
            continue
        wanted = {**found.tags, SERVING_VERSION_TAG: str(version)}
        differ = {k: {"registry": tags[k], "manifest": v} for k, v in sorted(wanted.items())
                  if k in tags and tags[k] != v}
        if differ:
            items.append(DriftItem(
                TAGS_DIFFER, f"version {version}",
                {"registry": {"version": version,
                              "tags": {k: d["registry"] for k, d in differ.items()}},
                 "repository": {"version": version,
                                "tags": {k: d["manifest"] for k, d in differ.items()}}},
                f"registry version {version} and directory {version} describe different "
                "content (or a tag was edited); find out which is right. --fix completes "
                "missing tags only and never overwrites one"))
            continue  # the manifest is not this version's: nothing to complete from it
        missing = {k: v for k, v in sorted(wanted.items()) if k not in tags}
        if tags.get(PUBLISHED_TAG) != "true":
            missing[PUBLISHED_TAG] = "true"
        if missing:
            items.append(DriftItem(
                TAGS_MISSING, f"version {version}",
                {"registry": {"version": version,
                              "tags": {k: tags.get(k) for k in missing}},
                 "repository": {"version": version, "tags": missing}},
                f"--fix sets {', '.join(missing)} on registry version {version} from "
                f"directory {version}'s shipyard.json",
                Repair("complete_tags", version=version, tags=missing)))
    for version, tags in sorted(registry.versions.items()):
        if tags.get(PUBLISHED_TAG) == "true" and version not in repo.published:
            pointing = sorted(a for a, v in registry.aliases.items() if v == version)
            items.append(DriftItem(
                REGISTERED_WITHOUT_DIRECTORY, f"version {version}",
                {"registry": {"version": version, PUBLISHED_TAG: "true", "aliases": pointing},
                 "repository": {"version": version, "state": sides.on_disk(version)}},
                f"restore directory {version} of {name} from a backup (its registry version's "
                "model artifact holds the same SavedModel); reconcile never publishes or "
                "deletes a version"))
    return items


def _checksums(sides: _Sides) -> list[DriftItem]:
    items = []
    for version, found in sorted(sides.repo.published.items()):
        if not found.problems:
            continue
        labels = sorted(k for k, v in sides.config.labels.items() if v == version)
        aliases = sorted(k for k, v in sides.registry.aliases.items() if v == version)
        items.append(DriftItem(
            CHECKSUM_FAILED, f"version {version}",
            {"repository": {"version": version, "problems": list(found.problems)},
             "config": {"labels": labels}, "registry": {"aliases": aliases}},
            f"version {version}'s files differ from its shipyard.json: restore them from a "
            "backup (or its registry version's model artifact)"
            + (f"; move {', '.join(labels + aliases)} to an intact version first"
               if labels or aliases else "")
            + ". reconcile never rewrites or deletes a version"))
    return items


def _signatures(sides: _Sides) -> list[DriftItem]:
    """Versions whose signature does not verify with the trust key: never fixable (only the
    signer can sign, and a version is never rewritten), and never labelled by --fix."""
    items = []
    for version, found in sorted(sides.repo.published.items()):
        if found.signature is None:
            continue
        labels = sorted(k for k, v in sides.config.labels.items() if v == version)
        aliases = sorted(k for k, v in sides.registry.aliases.items() if v == version)
        items.append(DriftItem(
            SIGNATURE_FAILED, f"version {version}",
            {"repository": {"version": version, "signature": found.signature},
             "config": {"labels": labels}, "registry": {"aliases": aliases}},
            f"version {version}'s signature does not verify with the trust key: "
            + ("re-publish it signed (`shipyard register` or `shipyard copy` with --sign-key), "
               "or restore its files from a backup if they were changed"
               if not found.signature.startswith("no signature") else
               "it was published unsigned: publish the model again with --sign-key")
            + (f"; move {', '.join(labels + aliases)} to a version that verifies first"
               if labels or aliases else "")
            + ". reconcile never signs, rewrites or deletes a version"))
    return items


def _server_against_config(sides: _Sides, server: ServerView) -> list[DriftItem]:
    items = []
    configured = set(sides.config.versions)
    served = {v for v, state in server.states.items() if state == AVAILABLE}
    address = server.address
    for version in sorted(served - configured):
        items.append(DriftItem(
            SERVER_EXTRA_VERSION, f"server {address} version {version}",
            {"config": {"versions": sorted(configured)},
             "server": {"address": address, "version": version, "state": AVAILABLE}},
            f"TF Serving at {address} serves version {version}, which models.config does not "
            "load: it has not applied the current config. It does on its next config poll "
            "(--model_config_file_poll_wait_seconds) or when sent it (`shipyard push "
            f"--serving-address {address}`); restart it if it keeps serving version "
            f"{version}"))
    for version in sorted(configured - served):
        items.append(DriftItem(
            SERVER_MISSING_VERSION, f"server {address} version {version}",
            {"config": {"versions": sorted(configured)},
             "server": {"address": address, "version": version,
                        "state": server.states.get(version)}},
            f"TF Serving at {address} does not serve version {version}, which models.config "
            f"loads ({sides.on_disk(version)} in the repository): if it is LOADING, wait; if "
            f"it ended, its log says why (`shipyard status --serving-address {address}`); if "
            "the server never got the config, it does on its next config poll or when sent "
            "it (`shipyard push`)"))
    return items
