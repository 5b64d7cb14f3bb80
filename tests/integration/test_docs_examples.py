"""The shell examples the docs mark as runnable, run as a reader would run them.

A fenced block right after `<!-- runnable -->` is a bash script; one right after
`<!-- runnable: write FILE -->` is a file the next blocks use (a rollout policy, say). Each
page's blocks run in order, in one fresh temporary directory per page, with the venv's bin
first on PATH and shipyard's embedded defaults (no MLflow server, no cluster, no network).
Each script must exit 0 and print no error. Mark only examples that take seconds: the whole
file is meant to stay well under a minute."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[2] / "docs"
MARK = re.compile(r"^<!-- runnable(?:: write (?P<file>[^ ]+))? -->\n```(?P<lang>[\w-]*)\n"
                  r"(?P<body>.*?)^```$", re.M | re.S)
FAILURE = re.compile(r"^(error:|Traceback \(most recent call last\))", re.M)


def runnable_blocks(page: Path) -> list[tuple[str | None, str, str]]:
    """(file to write or None, language, body) of each marked block, in page order."""
    return [(m["file"], m["lang"], m["body"]) for m in MARK.finditer(page.read_text())]


PAGES = sorted(p for p in DOCS.glob("*.md") if runnable_blocks(p))


def test_the_docs_mark_examples_to_run():
    names = {p.name for p in PAGES}
    assert {"rollout-policy.md", "signing.md"} <= names, names
    for page in PAGES:  # the marker must sit right on the fence, or the block is skipped
        assert page.read_text().count("<!-- runnable") == len(runnable_blocks(page)), page


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_the_runnable_examples_work(page: Path, tmp_path: Path):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SHIPYARD_NOTIFY",
                "SHIPYARD_VERIFY_KEY", "SHIPYARD_SIGNING_KEY", "KUBECONFIG"):
        env.pop(var, None)  # the embedded defaults, whatever the caller's shell has
    for number, (file, lang, body) in enumerate(runnable_blocks(page), start=1):
        if file is not None:
            (tmp_path / file).write_text(body)
            continue
        assert lang in ("bash", "sh", "console", ""), f"{page.name} block {number}: {lang}"
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        shown = f"{page.name}, runnable block {number}:\n{body}\n{result.stdout}{result.stderr}"
        assert result.returncode == 0, shown
        assert not FAILURE.search(result.stdout + result.stderr), shown
