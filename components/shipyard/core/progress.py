"""Progress of long steps: a spinner on a terminal, one line per step otherwise.

Steps nest (the demo's "register the challenger" runs register's own steps). A person sees the
outermost steps, one line each, with the step running now on the spinner; the inner steps'
lines go to `record` (the command run's log file) when there is one. Without a `record`
(`--verbose`, in-process runners) every step is shown, as there is nowhere else to put it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Protocol

Write = Callable[[str], None]


class Progress(Protocol):
    def step(self, label: str) -> contextlib.AbstractContextManager[None]: ...


class NullProgress:
    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        yield


class _Steps:
    """The open steps' labels and where their end lines go, shared by both progress kinds."""

    def __init__(self, record: Write | None) -> None:
        self.open: list[str] = []
        self._record = record

    @property
    def has_log(self) -> bool:
        return self._record is not None

    def shown(self) -> bool:
        """Whether the innermost open step gets a line of its own on the terminal."""
        return len(self.open) == 1 or not self.has_log

    def record(self, line: str) -> None:
        if self._record is not None:
            self._record("  " * (len(self.open) - 1) + line)


def _ended(label: str, ok: bool, seconds: float) -> str:
    return f"{label}: {'done in' if ok else 'failed after'} {seconds:.1f} s"


class LogProgress:
    """One line per step when it ends, with its duration (for CI and pipeline logs)."""

    def __init__(self, show: Write, record: Write | None = None) -> None:
        self._show = show
        self._steps = _Steps(record)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        self._steps.open.append(label)
        ok = False
        try:
            yield
            ok = True
        finally:
            line = _ended(label, ok, time.monotonic() - started)
            self._steps.record(line)
            if self._steps.shown():
                self._show(line)
            self._steps.open.pop()


class RichProgress:
    """A spinner naming the running step (an inner one after its outermost), and a tick (or a
    cross) with the duration when a shown step ends."""

    def __init__(self, console: object, record: Write | None = None) -> None:
        self._console = console
        self._steps = _Steps(record)
        self._spinner: object | None = None

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        self._steps.open.append(label)
        ok = False
        try:
            with self._running(label):
                yield
            ok = True
        finally:
            seconds = time.monotonic() - started
            self._steps.record(_ended(label, ok, seconds))
            if self._steps.shown():
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                self._console.print(  # type: ignore[attr-defined]
                    f"{mark} {label} [dim]({seconds:.1f} s)[/dim]", highlight=False)
            self._steps.open.pop()

    @contextlib.contextmanager
    def _running(self, label: str) -> Iterator[None]:
        spinner = self._spinner
        if spinner is not None:  # nested: the outermost step's spinner names this one too
            outer = spinner.text  # type: ignore[attr-defined]
            spinner.text = f"{self._steps.open[0]} · {label} ..."  # type: ignore[attr-defined]
            try:
                yield
            finally:
                spinner.text = outer  # type: ignore[attr-defined]
            return
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", text=f"{label} ...", style="status.spinner")
        # With a log file, what the libraries print goes there: Live must not pull it back
        # onto the terminal. Without one, Live keeps their lines above the spinner.
        interleave = not self._steps.has_log
        try:
            with Live(self._spinner, console=self._console, transient=True,  # type: ignore
                      refresh_per_second=12.5, redirect_stdout=interleave,
                      redirect_stderr=interleave):
                yield
        finally:
            self._spinner = None
