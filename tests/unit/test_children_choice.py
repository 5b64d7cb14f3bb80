"""How verifier and reference children start (exporter/children.py): forked from one fork
server in shipyard's own program, fresh interpreters for a library caller, and
$SHIPYARD_CHILDREN to choose."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.processes import subprocess_env

from shipyard.core.errors import UsageError
from shipyard.exporter.children import choose_children


@pytest.mark.parametrize("setting,program,forkserver,daemon,expected", [
    (None, True, True, False, "forked"),  # shipyard's program
    (None, False, True, False, "fresh"),  # a library caller: its fork server is its own
    ("", True, True, False, "forked"),
    ("fresh", True, True, False, "fresh"),
    ("forked", False, True, False, "forked"),  # a library caller that asks for it
    ("forked", True, False, False, "fresh"),  # no forkserver (Windows)
    (None, True, True, True, "fresh"),  # a daemonic multiprocessing worker has no children
])
def test_the_choice(setting, program, forkserver, daemon, expected):
    assert choose_children(setting, program=program, forkserver=forkserver,
                           daemon=daemon) == expected


def test_a_wrong_setting_names_the_variable_and_the_values():
    with pytest.raises(UsageError, match=r"SHIPYARD_CHILDREN='spawn': expected 'forked' or "
                                         r"'fresh' .*unset it for the default"):
        choose_children("spawn", program=True, forkserver=True, daemon=False)


@pytest.mark.parametrize("program,setting,expected", [
    (True, None, "ForkedStarter"), (True, "fresh", "function"), (False, None, "function")])
def test_the_process_default(program, setting, expected):
    """In a process of its own, as the program and a library caller each have it."""
    code = ("from shipyard.exporter import children\n"
            + ("children.fork_children_by_default()\n" if program else "")
            + "print(type(children.default_starter()).__name__)")
    env = {k: v for k, v in subprocess_env().items() if k != "SHIPYARD_CHILDREN"}
    if setting:
        env["SHIPYARD_CHILDREN"] = setting
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
