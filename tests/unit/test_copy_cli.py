"""How `shipyard copy` reads --version, --alias (twice) and --to-alias (cli/copy.py)."""

from __future__ import annotations

import pytest

from shipyard.cli.copy import split_aliases
from shipyard.core.errors import UsageError


@pytest.mark.parametrize("version, aliases, to_alias, expected", [
    (None, ("champion",), None, ("champion", "candidate")),
    (None, ("champion", "prod-candidate"), None, ("champion", "prod-candidate")),
    (None, ("champion",), "prod-candidate", ("champion", "prod-candidate")),
    (3, (), None, (None, "candidate")),
    (3, ("prod-candidate",), None, (None, "prod-candidate")),
    (3, (), "prod-candidate", (None, "prod-candidate")),
    (None, (), None, (None, "candidate")),  # neither: copy_version says which to give
])
def test_the_synopsis_is_read_as_written(version, aliases, to_alias, expected):
    assert split_aliases(version, aliases, to_alias) == expected


def test_two_destination_aliases_are_refused():
    with pytest.raises(UsageError, match=r"alias: the destination's alias is given more than "
                                         r"once \(a, b\)"):
        split_aliases(None, ("champion", "a"), "b")
