"""Every command's --help is a public interface (scripts, docs and users' muscle memory):
it is compared with tests/unit/data/help.txt, recorded before the package was reorganised.
A deliberate change regenerates the file:
`python tests/unit/test_help_unchanged.py > tests/unit/data/help.txt`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import click
from click.testing import CliRunner

from shipyard.cli import main

RECORDED = Path(__file__).parent / "data" / "help.txt"


def _command_paths(command: click.Command, path: list[str]) -> Iterator[list[str]]:
    yield path
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _command_paths(command.commands[name], path + [name])


def every_help() -> str:
    runner = CliRunner()
    out = []
    for path in _command_paths(main, []):
        result = runner.invoke(main, path + ["--help"], prog_name="shipyard", terminal_width=100)
        out.append(f"=== shipyard {' '.join(path)} --help (exit {result.exit_code})\n"
                   f"{result.output}\n")
    return "".join(out)


def test_every_help_is_unchanged():
    now, recorded = every_help(), RECORDED.read_text()
    assert now.count("=== shipyard") == 23, "a command was added or lost"
    assert now == recorded, "a --help changed; see the module docstring to record a change"


if __name__ == "__main__":
    print(every_help(), end="")
