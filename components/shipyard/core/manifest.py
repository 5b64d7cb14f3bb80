"""shipyard.json: what a version directory holds, and the content fingerprint. Pure (hashlib, os).

The fingerprint must be equal whenever the same source model is exported with the same spec.
Neither saved_model.pb nor the variables files are byte-stable between two exports of one model:
function names vary, and ExportArchive lists the variables its endpoints use in no fixed order,
which permutes checkpoint keys and the object graph. What is stable is the content: the model's
architecture (its Keras config), the multiset of variable values, the lookup vocabularies
(StringLookup keeps an inline vocabulary as a graph constant, not a variable), the assets
files, the normalized spec and the signatures. Together
they determine what the version computes and how it is called, so the fingerprint hashes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_DIR = "assets.extra"
MANIFEST_NAME = "shipyard.json"
MANIFEST_PATH = f"{MANIFEST_DIR}/{MANIFEST_NAME}"
# The version's signature (a model-signing bundle over every other file, the manifest
# included): written after the manifest, so never listed in it.
SIGNATURE_PATH = f"{MANIFEST_DIR}/model.sig"
MANIFEST_FORMAT = 1
_FINGERPRINTED_DIRS = ("assets",)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """shipyard.json, typed. The file's keys are these fields' names; `to_json()` writes them
    and `from_json()` reads them back, so the file's layout is this class."""

    name: str
    created_at: str
    source: dict[str, Any]  # what the model was loaded from (kind, path, class)
    spec: dict[str, Any]  # the normalized export spec (core.spec.ExportSpec.normalized)
    fingerprint: str  # "sha256:...": equal for the same content (see the module docstring)
    signatures: dict[str, Any]  # core.signatures' signature set
    default_endpoint: str
    variable_collections: dict[str, int]  # collection name -> number of variables
    parity: dict[str, dict[str, Any]]  # endpoint -> max_abs_error, batch_sizes, atol, rtol
    warmup_records: int
    verification: dict[str, Any]  # devices, load_seconds, runtimes
    producer: dict[str, str]  # shipyard, tensorflow and keras versions
    files: list[dict[str, Any]]  # path, size, sha256 of every other file, sorted by path
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer format, kept

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data.pop("extra"), **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def endpoint_names(self) -> list[str]:
        return [e["name"] for e in self.spec["endpoints"]]


class HashingStopped(Exception):
    """Hashing was asked to stop (its `stop` event was set): nobody will read the result."""


def check_stop(stop: threading.Event | None, what: object) -> None:
    if stop is not None and stop.is_set():
        raise HashingStopped(f"stopped hashing {what}: the export already failed")


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            check_stop(stop, path)
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path, stop: threading.Event | None = None) -> list[dict[str, Any]]:
    """Every file under `root` (except the manifest and the signature) with size and sha256,
    sorted; `stop`, once set, ends it with HashingStopped at the next chunk."""
    entries = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            if rel in (MANIFEST_PATH, SIGNATURE_PATH):
                continue
            entries.append({"path": rel, "size": path.stat().st_size,
                            "sha256": sha256_file(path, stop)})
    return sorted(entries, key=lambda e: e["path"])


def fingerprint(files: list[dict[str, Any]], normalized_spec: dict[str, Any],
                signatures: dict[str, Any], variable_digests: list[str],
                vocabularies: list[list[Any]], architecture: str) -> str:
    """`variable_digests`: one digest per checkpoint tensor, in any order (sorted here);
    `architecture`: a digest of what the model computes beyond its weights."""
    digest = hashlib.sha256()
    digest.update(_canonical({"spec": normalized_spec, "signatures": signatures,
                              "variables": sorted(variable_digests),
                              "vocabularies": vocabularies,
                              "architecture": architecture}).encode())
    for entry in files:
        if entry["path"].split("/", 1)[0] in _FINGERPRINTED_DIRS:
            digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return "sha256:" + digest.hexdigest()


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / MANIFEST_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(version_dir: Path) -> Manifest | None:
    """The version's manifest, or None if it has none (not written by shipyard)."""
    path = version_dir / MANIFEST_PATH
    if not path.exists():
        return None
    return Manifest.from_json(json.loads(path.read_text()))


def checksum_mismatches(version_dir: Path, manifest: Manifest) -> list[str]:
    """Files whose size or sha256 differ from the manifest, or that are missing."""
    problems = []
    for entry in manifest.files:
        path = version_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: content differs from {MANIFEST_NAME}")
    return problems


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
