"""`python -m shipyard ...`: the CLI, for callers that have the interpreter but not the
console script on PATH (KFP components, subprocess tests)."""

import sys

from shipyard.cli import run
from shipyard.exporter.children import fork_children_by_default

fork_children_by_default()  # the process is shipyard's own program
sys.exit(run())
