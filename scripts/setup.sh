#!/usr/bin/env bash
# Creates .venv from requirements.lock (installing uv first when it is missing) and installs
# shipyard into it in editable mode. Safe to run again: a venv that matches the lock is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi

stamp=.venv/.shipyard-lock.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup: creating .venv from requirements.lock" >&2
[ -d .venv ] || uv venv --quiet --python 3.11 .venv
uv pip sync --quiet --python .venv/bin/python requirements.lock
# kfp.local's lightweight components run `python3 -m pip install kfp --no-deps` inside the venv,
# and uv venvs ship no pip: without it those tasks fail with an empty log.
uv pip install --quiet --python .venv/bin/python pip
uv pip install --quiet --python .venv/bin/python --no-deps -e .
echo "$want" > "$stamp"
