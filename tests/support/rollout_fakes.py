"""Fakes of the rollout controller's interfaces (rollout/controller.py): a cluster with a
Lease and a state store, a scripted observer, an alias recorder and a clock. Test doubles of
our own interfaces only; nothing under components/ imports them."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from shipyard.core.errors import LeaseHeldError, ShipyardError
from shipyard.rollout.controller import Ports
from shipyard.rollout.gates import Observation


class Crash(BaseException):
    """The controller's process dies (it is not an error the controller handles)."""


class FakeCluster:
    def __init__(self, stable: int | None = 1, holder: str | None = None):
        self.stable = stable
        self.holder = holder  # who holds the Lease now
        self.canary: int | None = None
        self.weight = 0
        self.mirror = 0  # the share of stable's traffic copied to the canary
        self.states: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple] = []
        self.crash_on: tuple | None = None  # a call that kills the process (once)
        self.fail_on: tuple | None = None  # a call that fails with a ShipyardError (always)
        self.lose_lease_after: int | None = None  # lease checks before it is lost
        self.lease_checks = 0

    @contextlib.contextmanager
    def lease(self, name: str, holder: str, wait_s: float) -> Iterator[Any]:
        if self.holder is not None and self.holder != holder:
            raise LeaseHeldError(f"rollout of {name} is held by {self.holder}")
        self.holder = holder
        try:
            yield self
        finally:
            self.holder = None

    def check(self) -> None:
        """The Lease handle's check (the fake cluster is its own handle)."""
        self.lease_checks += 1
        if self.lose_lease_after is not None and self.lease_checks > self.lose_lease_after:
            raise LeaseHeldError("lost the Lease to another controller")

    def load_state(self, name: str) -> dict[str, Any] | None:
        return self.states.get(name)

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self.states[name] = state

    def load_request(self, name: str) -> dict[str, Any] | None:
        return self.requests.get(name)

    def save_request(self, name: str, request: dict[str, Any]) -> None:
        self.requests[name] = request

    def stable_version(self, name: str) -> int | None:
        return self.stable

    def _record(self, *call: Any) -> None:
        if call == self.crash_on:
            self.crash_on = None
            raise Crash(call)
        if call == self.fail_on:
            raise ShipyardError(f"{call[0]} timed out")
        self.calls.append(call)

    def deploy_canary(self, name: str, version: int) -> None:
        self._record("deploy_canary", version)
        self.canary = version

    def set_weight(self, name: str, weight: int) -> None:
        self._record("set_weight", weight)
        self.weight = weight
        self.mirror = 0  # a weighted route carries no mirror (kube.cluster renders none)

    def set_mirror(self, name: str, percent: int) -> None:
        self._record("set_mirror", percent)
        self.mirror = percent

    def promote_stable(self, name: str, version: int) -> None:
        self._record("promote_stable", version)
        self.stable = version

    def remove_canary(self, name: str) -> None:
        self._record("remove_canary")
        self.canary = None
        self.mirror = 0


class ScriptedObserver:
    """Returns the given observations in turn (the last one repeats); `hooks[i]` runs before
    the i-th observation (e.g. another process asks for an abort)."""

    def __init__(self, observations: list[Observation], hooks: dict[int, Any] | None = None):
        self.observations = observations
        self.hooks = hooks or {}
        self.count = 0

    def observe(self, name: str, state: Any) -> Observation:
        hook = self.hooks.get(self.count)
        if hook is not None:
            hook()
        observation = self.observations[min(self.count, len(self.observations) - 1)]
        self.count += 1
        return observation


class RecordingAliases:
    def __init__(self, champion: int | None = 1):
        self.champion_version = champion
        self.canary: int | None = None
        self.moves: list[tuple] = []

    def champion(self, name: str) -> int | None:
        return self.champion_version

    def set_canary(self, name: str, version: int, reason: str) -> None:
        self.canary = version
        self.moves.append(("canary", version, reason))

    def clear_canary(self, name: str, reason: str, gates: dict[str, Any]) -> None:
        self.canary = None
        self.moves.append(("canary", None, reason, gates))

    def move_champion(self, name: str, version: int, reason: str,
                      gates: dict[str, Any]) -> None:
        self.champion_version = version
        self.moves.append(("champion", version, reason, gates))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def ports(cluster: FakeCluster, observer: ScriptedObserver, aliases: RecordingAliases,
          clock: FakeClock | None = None) -> Ports:
    clock = clock or FakeClock()
    return Ports(cluster, observer, aliases, clock=clock, sleep=clock.sleep)
