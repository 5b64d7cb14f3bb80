"""Repositories built from the session's published versions (tests/conftest.py `published`):
tests copy a version instead of exporting it again, and never change the original."""

from __future__ import annotations

import shutil
from pathlib import Path

from shipyard.serving.config import parse_config


def add_version(repo: Path, name: str, version: int, template: Path) -> Path:
    """A copy of the published version TEMPLATE as version VERSION of NAME in REPO."""
    target = Path(repo) / name / str(version)
    shutil.copytree(template, target)
    return target


def config_of(repo: Path):
    """REPO's models.config, parsed."""
    return parse_config((Path(repo) / "models.config").read_text())
