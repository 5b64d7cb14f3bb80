"""`shipyard reconcile`: read the registry, the repository, models.config and the TF Servings
about one model, compare them (steps.drift, pure), and with `fix` make the safe repairs, then
compare again.

The repairs go through the code the commands use: labels move through steps.push (its
two-step moves, its serving lock, its restore on failure), tags are written with the registry
adapter. A label is moved on the server when exactly one server is given; with none or several,
models.config is changed as `shipyard push` without --serving-address changes it (up to a step
that loads a new version: the servers that poll the file must load it before the label can
move), and a second `--fix` once they have finishes the move.

With a trust key, each published version's signature is checked too (model-signing's
verifier, steps.verify; an object store's versions are downloaded for it): a version that
fails is a `signature_failed` item, never fixable, and --fix moves no label onto it.

A side that cannot be read fails the whole run with its error (MLflow: exit 6; a server:
exit 7): without it, nothing can be said to agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from shipyard.core.errors import ServingError, UsageError
from shipyard.core.manifest import Manifest
from shipyard.core.names import validate_model_name
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.repository import ModelRepository
from shipyard.core.vocabulary import COLLECTIONS_TAG, ENDPOINTS_TAG, FINGERPRINT_TAG
from shipyard.registry.client import ModelRegistry, to_json_tag
from shipyard.serving.config_file import current_serving
from shipyard.signing.keys import TrustKey
from shipyard.steps.drift import (
    LABEL_ALIASES,
    ConfigView,
    DriftItem,
    PublishedVersion,
    RegistryView,
    Repair,
    RepositoryView,
    ServerView,
    find_drift,
)
from shipyard.steps.push import DEFAULT_TIMEOUT_S, drop_label, push_version
from shipyard.steps.verify import signature_check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileResult:
    name: str
    drift: list[DriftItem]  # what disagrees (after --fix: what is left)
    fixed: list[DriftItem]  # items of the first comparison that --fix's repairs resolved

    @property
    def in_sync(self) -> bool:
        return not self.drift

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "in_sync": self.in_sync,
                "drift": [item.to_json() for item in self.drift],
                "fixed": [item.to_json() for item in self.fixed]}


def reconcile(repo: ModelRepository, name: str, registry: ModelRegistry, *,
              servers: Sequence[str] = (), fix: bool = False,
              timeout_s: float = DEFAULT_TIMEOUT_S,
              progress: Progress = NullProgress(),
              trust: TrustKey | None = None) -> ReconcileResult:
    """Compares, and with `fix` repairs what is safe and compares again. With `trust`, the
    versions' signatures are compared with it too."""
    validate_model_name(name)
    servers = [_checked_server(address) for address in servers]
    drift = _compare(repo, name, registry, servers, progress, trust)
    repairs = _repairs(drift) if fix else []
    if not repairs:
        return ReconcileResult(name, drift, [])
    address = servers[0] if len(servers) == 1 else None
    if len(servers) > 1:
        log.warning("%s: %d servers given: --fix changes models.config only, as `shipyard "
                    "push` without --serving-address does; the servers load it on their next "
                    "config poll", name, len(servers))
    for repair in repairs:
        _make(repair, repo, name, registry, address, timeout_s, progress, trust)
    after = _compare(repo, name, registry, servers, progress, trust)
    remaining = {item.key for item in after}
    return ReconcileResult(name, after, [item for item in drift if item.key not in remaining])


def _checked_server(address: str) -> str:
    from shipyard.serving.client import check_address

    try:
        return check_address(address)
    except UsageError:
        raise UsageError(f"server: expected HOST:PORT (TF Serving's gRPC port, usually "
                         f"8500), got {address!r}", param="server") from None


def _compare(repo: ModelRepository, name: str, registry: ModelRegistry,
             servers: list[str], progress: Progress,
             trust: TrustKey | None = None) -> list[DriftItem]:
    with progress.step(f"read the registry at {registry.location.registry_uri}"):
        registry_view = read_registry(registry, name)
    with progress.step(f"read {name} in {repo.location} and verify its checksums"
                       + (" and signatures" if trust is not None else "")):
        repo_view = read_repository(repo, name, trust)
    config = current_serving(repo, name)
    config_view = ConfigView(config.versions, dict(config.labels)) if config else ConfigView()
    server_views = []
    for address in servers:
        with progress.step(f"read {name}'s versions on TF Serving at {address}"):
            server_views.append(read_server(address, name))
    return find_drift(name, registry_view, repo_view, config_view, server_views)


def read_registry(registry: ModelRegistry, name: str) -> RegistryView:
    from shipyard.registry.inventory import version_tags

    aliases = registry.aliases(name)
    if aliases is None:
        raise UsageError(
            f"name {name}: the registry at {registry.location.registry_uri} has no registered "
            f"model {name}, so there is nothing to compare the repository with. Point "
            "--tracking-uri/--registry-uri (or MLFLOW_TRACKING_URI) at the registry that holds "
            "it, or check --name", param="name")
    return RegistryView(aliases=aliases, versions=version_tags(registry, name))


def read_repository(repo: ModelRepository, name: str,
                    trust: TrustKey | None = None) -> RepositoryView:
    """Published versions with their checksum problems (repo.checksum_problems, as `push`
    verifies a version) and, with `trust`, what fails in their signature; numbered entries
    that are not published versions, with why."""
    published: dict[int, PublishedVersion] = {}
    unpublished = {version: f"a symlink to {target}, not a published version"
                   for version, target in repo.symlinked_versions(name).items()}
    for version in repo.versions(name):
        try:
            manifest = repo.read_manifest(name, version)
        except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable or malformed
            unpublished[version] = f"a directory with an unreadable shipyard.json ({err})"
            continue
        if manifest is None:
            unpublished[version] = "a directory without shipyard.json"
            continue
        published[version] = PublishedVersion(
            manifest.fingerprint, manifest_tags(manifest),
            tuple(repo.checksum_problems(name, version, manifest)),
            signature_check(repo, name, version, trust, manifest) if trust is not None
            else None)
    return RepositoryView(published, dict(sorted(unpublished.items())))


def manifest_tags(manifest: Manifest) -> dict[str, str]:
    """The `shipyard.*` version tags a manifest determines, as `shipyard register` writes
    them (steps.register)."""
    return {FINGERPRINT_TAG: manifest.fingerprint,
            ENDPOINTS_TAG: ",".join(manifest.endpoint_names()),
            COLLECTIONS_TAG: to_json_tag(manifest.variable_collections)}


def read_server(address: str, name: str) -> ServerView:
    from shipyard.serving.client import ServingClient

    try:
        with ServingClient(address) as client:
            states = client.version_states(name)
    except ServingError as err:  # the client's message names push's flag; this one's differs
        raise ServingError(str(err).replace("--serving-address", "--server")) from None
    return ServerView(address, {version: s["state"] for version, s in states.items()})


def _repairs(drift: list[DriftItem]) -> list[Repair]:
    """The distinct repairs of the fixable items: tags first, then the labels in
    LABEL_ALIASES' order (stable, then canary)."""
    unique: dict[tuple[Any, ...], Repair] = {}
    for item in drift:
        if item.repair is not None:
            unique.setdefault(item.repair.key, item.repair)
    order = [label for label, _ in LABEL_ALIASES]
    return sorted(unique.values(), key=lambda r: (
        r.action != "complete_tags", order.index(r.label) if r.label in order else len(order),
        r.version or 0))


def _make(repair: Repair, repo: ModelRepository, name: str, registry: ModelRegistry,
          address: str | None, timeout_s: float, progress: Progress,
          trust: TrustKey | None) -> None:
    if repair.action == "complete_tags":
        assert repair.version is not None
        with progress.step(f"complete the tags of registry version {repair.version}"):
            registry.set_version_tags(name, repair.version, repair.tags)
        return
    assert repair.label is not None
    if repair.action == "drop_label":
        drop_label(repo, name, repair.label, serving_address=address, timeout_s=timeout_s,
                   progress=progress)
        return
    assert repair.version is not None
    # The push checks the signature again, under the serving lock (it may have changed since).
    result = push_version(repo, name, repair.version, repair.label, serving_address=address,
                          timeout_s=timeout_s, progress=progress, trust=trust)
    if not result.complete:
        log.warning("%s: version %d is now loaded by models.config, but label %s can move to "
                    "it only once TF Serving has loaded it; run `shipyard reconcile --fix` "
                    "again then (or pass the one --server to wait for it)", name,
                    repair.version, repair.label)
