"""Running `shipyard` and Python as child processes, as a user or a job runs them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from support.paths import TESTS_DIR

SHIPYARD = str(Path(sys.executable).parent / "shipyard")


def subprocess_env() -> dict[str, str]:
    """Environment for `shipyard` child processes: the support package importable (so
    `--import support.shipyard_test_models` loads the test models' custom classes), TF quiet."""
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="2")
