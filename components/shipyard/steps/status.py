"""`shipyard status`: one model's versions on disk, labels in models.config, registry aliases
and what the server reports, side by side.

A part that cannot be read (registry or server unreachable) is reported in `errors` while
the rest is still shown; the CLI then exits with that error's code.

Each version on disk says whether it is signed (the method and the key's fingerprint its
manifest records) or unsigned; `shipyard verify` checks a signature against a trust key.

A version directory that is a symlink gets a row with `symlink` set to its target and a
warning; it is not followed (no size, no manifest read through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from shipyard.core.errors import ShipyardError, UsageError
from shipyard.core.names import validate_model_name
from shipyard.core.repository import ModelRepository
from shipyard.serving.config_file import current_serving
from shipyard.steps.verify import signing_of

AliasReader = Callable[[str], dict[str, int] | None]
StateReader = Callable[[str], dict[int, dict[str, Any]]]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    repository: str
    config: str  # where models.config is
    labels: dict[str, int]
    aliases: dict[str, int] | None  # None: the registry was not read
    versions: list[dict[str, Any]]  # one row per version on disk, configured or served
    warnings: list[str]
    errors: list[dict[str, Any]]  # parts that could not be read: source, message, exit_code

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repository": self.repository, "config": self.config,
                "labels": self.labels, "aliases": self.aliases, "versions": self.versions,
                "warnings": self.warnings, "errors": self.errors}


def model_status(repo: ModelRepository, name: str, *, read_aliases: AliasReader | None,
                 read_server: StateReader | None) -> ModelStatus:
    validate_model_name(name)
    errors: list[dict[str, Any]] = []
    serving = current_serving(repo, name)
    # A registry that does not know NAME has no aliases for it ({}); None: not read.
    aliases = (_attempt(lambda: read_aliases(name) or {}, "registry", errors)
               if read_aliases else None)
    server = _attempt(lambda: read_server(name), "server", errors) if read_server else None
    on_disk = repo.versions(name)
    links = repo.symlinked_versions(name)
    rows = []
    for version in sorted(set(on_disk) | set(links) | set(serving.versions if serving else ())
                          | set((server or {}).keys())):
        manifest = repo.read_manifest(name, version) if version in on_disk else None
        rows.append({
            "version": version,
            "on_disk": version in on_disk,
            "symlink": links.get(version),
            "bytes": repo.version_bytes(name, version) if version in on_disk else None,
            "fingerprint": manifest.fingerprint if manifest else None,
            "created_at": manifest.created_at if manifest else None,
            # As the manifest records it (method, key fingerprint); None: unsigned. Whether
            # the signature holds is `shipyard verify`'s to say (it needs a trust key).
            "signing": _signing(manifest),
            "in_config": bool(serving and version in serving.versions),
            "labels": sorted(k for k, v in (serving.labels if serving else {}).items()
                             if v == version),
            "aliases": sorted(k for k, v in (aliases or {}).items() if v == version),
            "server": (server or {}).get(version, {}).get("state"),
        })
    warnings = [f"version {version} ({repo.version_location(name, version)}) is a symlink to "
                f"{target}: shipyard did not publish it and neither follows, verifies nor "
                "removes it, but TF Serving may load it; replace it with a published version "
                "or remove the link" for version, target in links.items()]
    # "Nothing known" only when every part was read: an unreachable registry or server is
    # reported as what it is (its error and exit code), not as an unknown name.
    if not rows and serving is None and not aliases and not errors:
        raise UsageError(f"name {name}: {repo.location} has no versions of {name}, its "
                         "models.config does not name it and the registry has no aliases for "
                         "it; check --repo and --name", param="name")
    return ModelStatus(name=name, repository=repo.location, config=repo.config_location,
                       labels=dict(sorted(serving.labels.items())) if serving else {},
                       aliases=aliases, versions=rows, warnings=warnings, errors=errors)


def _signing(manifest: Any) -> dict[str, Any] | None:
    record = signing_of(manifest)
    if record is None:
        return None
    return {"method": record.get("method"), "key_fingerprint": record.get("key_fingerprint")}


def _attempt(read: Callable[[], Any], source: str, errors: list[dict[str, Any]]) -> Any:
    try:
        return read()
    except ShipyardError as err:
        errors.append({"source": source, "message": str(err), "exit_code": err.exit_code})
        return None
