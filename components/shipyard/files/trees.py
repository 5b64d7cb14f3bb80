"""Trees of files placed elsewhere without writing their bytes again where possible."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def materialize(location: str, target: Path) -> None:
    """A published version's files at `target` (an orchestrator's output artifact):
    hard-linked when local (its bytes are not written again), else copied or downloaded."""
    if "://" in location:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        return
    root = Path(location)
    for path in root.rglob("*"):
        destination = target / path.relative_to(root)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:  # another filesystem
            shutil.copy2(path, destination)
