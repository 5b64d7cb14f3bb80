"""`python -m shipyard ...`: the CLI, for callers that have the interpreter but not the
console script on PATH (KFP components, subprocess tests)."""

import sys

from shipyard.cli import run

sys.exit(run())
