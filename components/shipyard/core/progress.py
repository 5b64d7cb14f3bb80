"""Progress of long steps: a spinner on a terminal, log lines otherwise (both on stderr)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Protocol

log = logging.getLogger("shipyard")


class Progress(Protocol):
    def step(self, label: str) -> contextlib.AbstractContextManager[None]: ...


class NullProgress:
    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        yield


class LogProgress:
    """One log line when a step ends, with its duration (for logs and CI)."""

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        log.info("%s ...", label)
        yield
        log.info("%s: done in %.1f s", label, time.monotonic() - started)


class RichProgress:
    """A spinner while a step runs and a tick with its duration when it ends."""

    def __init__(self, console: object) -> None:
        self._console = console

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        with self._console.status(f"{label} ..."):  # type: ignore[attr-defined]
            yield
        self._console.print(  # type: ignore[attr-defined]
            f"[green]✓[/green] {label} [dim]({time.monotonic() - started:.1f} s)[/dim]")
