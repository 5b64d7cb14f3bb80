"""core.claims: the owner of a pending version, whether it may still publish it, and which
version of one content every concurrent registration keeps (pure; no MLflow)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from shipyard.core.claims import Owner, may_be_alive, winner

HERE = Owner("box/boot-1/4026531836", pid=100, started=5000, token="mine")


def started_of(table: dict[int, int]):
    return lambda pid: table.get(pid)


def test_owner_tag_round_trips_and_a_bad_tag_reads_as_no_owner():
    assert Owner.from_tag(HERE.to_tag()) == HERE
    assert Owner.from_tag(Owner("h", 1, None, "t").to_tag()) == Owner("h", 1, None, "t")
    for bad in (None, "", "not json", "[]", '{"host": "h"}', '{"host":"h","pid":"x",'
                                                             '"started":1,"token":"t"}'):
        assert Owner.from_tag(bad) is None, bad


@pytest.mark.parametrize("owner,table,live,alive", [
    (None, {}, set(), False),                                     # older shipyard: no owner
    (Owner("elsewhere/boot-2/1", 100, 5000, "t"), {}, set(), True),  # cannot be seen from here
    (Owner(HERE.host, 100, 5000, "other"), {}, {"other"}, True),  # running in this process
    (Owner(HERE.host, 100, 5000, "gone"), {}, {"mine"}, False),   # ended in this process
    (Owner(HERE.host, 200, 7000, "t"), {200: 7000}, set(), True),  # another live process
    (Owner(HERE.host, 200, 7000, "t"), {}, set(), False),         # its process is gone
    (Owner(HERE.host, 200, 7000, "t"), {200: 9000}, set(), False),  # pid reused since
    (Owner(HERE.host, 200, None, "t"), {200: 9000}, set(), True),  # no start time: pid only
])
def test_may_be_alive(owner, table, live, alive):
    assert may_be_alive(owner, HERE, live, started_of(table)) is alive


@dataclass
class V:
    version: str
    tags: dict = field(default_factory=dict)


def test_winner_is_the_oldest_published_else_the_oldest():
    published = {"shipyard.published": "true"}
    assert winner([]) is None
    assert winner([V("12"), V("3"), V("7")]).version == "3"  # numbers, not strings
    assert winner([V("3"), V("7", published), V("9", published)]).version == "7"
    # Racing registrations read the versions in any order and keep the same one.
    racing = [V("5"), V("4"), V("6")]
    assert {winner(list(order)).version for order in itertools.permutations(racing)} == {"4"}
