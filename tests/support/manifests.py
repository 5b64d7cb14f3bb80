"""Manifests for tests that need a shipyard.json but no export: every field present (the typed
Manifest requires them), only `name` and `files` meaningful."""

from __future__ import annotations

from typing import Any

from shipyard.core.manifest import Manifest


def bare_manifest(files: list[dict[str, Any]], name: str = "m") -> Manifest:
    return Manifest(name=name, created_at="", source={}, spec={"endpoints": []},
                    fingerprint="", signatures={}, default_endpoint="",
                    variable_collections={}, parity={}, warmup_records=0, verification={},
                    producer={}, files=files)
