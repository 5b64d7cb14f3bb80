"""Running a command as a person does, in a terminal: a pseudo-terminal of a given size whose
output is rendered by a VT100 emulator (pyte), scrollback included, so the test reads the lines
a person would see after spinners have redrawn and cleared themselves."""

from __future__ import annotations

from dataclasses import dataclass

# What other libraries print that must stay in the log file (issue 16's list).
LIBRARY_CHATTER = (
    "Using Any for unsupported type",  # TFX
    "tensorflow_io is not available",  # TFX
    "SDK Harness", "Done consuming work", "Closing all cached gRPC",  # Beam's harness
    "oneDNN custom operations", "cuda drivers", "absl::InitializeLog",  # TensorFlow, absl
    "mlflow.store.db.utils", "Creating initial MLflow database tables",  # MLflow
    "Running pip as the 'root' user",  # pip
    "I0000 ", "W0000 ",  # absl's C++ record prefixes
)


@dataclass(frozen=True)
class Screen:
    exit_code: int
    lines: list[str]  # every line the terminal showed, scrollback first, trailing blanks cut

    @property
    def non_empty(self) -> list[str]:
        return [line for line in self.lines if line.strip()]

    def chatter(self) -> list[str]:
        return [line for line in self.lines if any(c in line for c in LIBRARY_CHATTER)]


def run_in_terminal(argv: list[str], *, env: dict[str, str], cwd: str, rows: int = 50,
                    columns: int = 160) -> Screen:
    import pyte
    from ptyprocess import PtyProcess

    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    child = PtyProcess.spawn(argv, env=dict(env, TERM="xterm-256color", COLUMNS=str(columns),
                                            LINES=str(rows)),
                             cwd=cwd, dimensions=(rows, columns))
    while True:
        try:
            stream.feed(child.read(65536))
        except EOFError:
            break
    child.wait()
    code = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)
    rendered = [_row(line, columns) for line in screen.history.top]
    rendered += [line.rstrip() for line in screen.display]
    while rendered and not rendered[-1].strip():
        rendered.pop()
    return Screen(code, rendered)


def _row(line: dict, columns: int) -> str:
    return "".join(line[x].data for x in range(columns)).rstrip()

