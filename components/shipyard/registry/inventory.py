"""Every version of a registered model with its tags, read in pages (for `shipyard reconcile`,
which compares them with the repository)."""

from __future__ import annotations

from shipyard.registry.client import ModelRegistry, translate_errors


def version_tags(registry: ModelRegistry, name: str) -> dict[int, dict[str, str]]:
    """{version: its tags} of NAME; {} when the registry has no version of NAME."""
    found: dict[int, dict[str, str]] = {}
    token = None
    with translate_errors(registry.location):
        while True:
            page = registry.client.search_model_versions(f"name='{name}'", page_token=token)
            for version in page:
                found[int(version.version)] = dict(version.tags or {})
            token = page.token
            if not token:
                return dict(sorted(found.items()))
