#!/usr/bin/env bash
# Regenerates requirements.lock: every package pinned, no index or download addresses recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv pip compile pyproject.toml --extra test \
  --override overrides.txt \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --no-header --no-annotate -o requirements.lock >/dev/null
echo "requirements.lock: $(grep -c '==' requirements.lock) pinned packages" >&2
