"""What MLflow's UI shows for shipyard's registered models and versions (pure).

Why: MLflow's UI shows a version's and a registered model's Description first. Left empty,
what shipyard verified is only in tags and artifacts, and the alias audit records fill the
model's Tags panel as raw JSON, one per move. The descriptions say what was verified, where
the version came from, and where the history is kept and how to read it.
"""

from __future__ import annotations

import json
from typing import Any

from shipyard.core.manifest import Manifest


def version_description(manifest: Manifest, location: str,
                        copied_from: dict[str, Any] | None = None) -> str:
    """Markdown for a version: endpoints, parity, serving runtimes, the source, the lineage."""
    lines = ["**Verified by shipyard** before it was published.", ""]
    endpoints = ", ".join(f"`{name}`" for name in sorted(manifest.parity)) or "none"
    lines.append(f"- Endpoints: {endpoints} (default `{manifest.default_endpoint}`).")
    for endpoint, figures in sorted(manifest.parity.items()):
        lines.append(f"- Parity of `{endpoint}` with the source model: max abs error "
                     f"{figures.get('max_abs_error')} (atol {figures.get('atol')}, rtol "
                     f"{figures.get('rtol')}).")
    for runtime, record in sorted((manifest.verification.get("runtimes") or {}).items()):
        lines.append(f"- Serving runtime TensorFlow {runtime}: {record.get('status')}.")
    source = manifest.source or {}
    lines.append(f"- Source: {source.get('format', 'model')} at `{source.get('path', '?')}`.")
    lines.append(f"- Fingerprint: `{manifest.fingerprint}`.")
    lines.append(f"- Repository: `{location}`.")
    if copied_from:
        lines.append(f"- Copied from {copied_from.get('registry')}: `{copied_from.get('name')}` "
                     f"version {copied_from.get('version')} (run {copied_from.get('run_id')}), "
                     "byte for byte; lineage in tag `shipyard.copied_from`.")
    return "\n".join(lines)


def model_description(name: str) -> str:
    """Markdown for a registered model: where its history is and how to read it."""
    return (f"Versions of `{name}` are exported, verified and published by shipyard: version "
            "N is the TF Serving version directory N. Each version's description says what "
            "was verified.\n\n"
            "Aliases (`candidate`, `champion`, `canary`) move only through shipyard, and every "
            "move is recorded on this model as a tag `shipyard.alias_log.*` (JSON: from, to, "
            "who, when, why, the gate figures). Read them in order with "
            f"`shipyard alias history {name}`.")


def lineage(tags: dict[str, str], key: str) -> dict[str, Any] | None:
    try:
        return json.loads(tags[key]) if key in tags else None
    except ValueError:
        return None
