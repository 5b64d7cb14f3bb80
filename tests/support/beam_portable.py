"""Beam's portable runner on this machine, as Flink, Spark or Dataflow's Python workers run a
pipeline: Beam's local job service and an external SDK worker pool, each a process of its
own with a working directory of its own, reached on localhost.

`PortableServices` starts both and gives the Beam arguments that point `--runner
PortableRunner` at them; leaving it stops them (SIGTERM, then SIGKILL of their process groups,
the pool's SDK workers included).

Each service is started on port 0 and the port it listens on is read from the kernel (the
process's own listening socket). A port picked beforehand and closed again is not safe here:
gRPC binds with SO_REUSEPORT, so a second server on the same port starts without an error and
takes part of the connections (seen while writing this: a stale worker pool answered half of
the jobs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.processes import kill_session, subprocess_env

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


class PortableServices:
    """The job service and the worker pool, started in DIRECTORY (their working directory,
    staging files and logs)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._processes: list[subprocess.Popen] = []
        self.job_port = self.worker_port = 0

    def __enter__(self) -> PortableServices:
        try:
            staging = self.directory / "staging"
            staging.mkdir(parents=True, exist_ok=True)
            self.job_port = self._start(
                "job-service", "apache_beam.runners.portability.local_job_service_main",
                "--port", "0", "--staging_dir", str(staging))
            self.worker_port = self._start(
                "worker-pool", "apache_beam.runners.worker.worker_pool_main",
                "--service_port", "0")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def beam_args(self) -> list[str]:
        """The Beam arguments of `--runner PortableRunner` for these services."""
        return [f"--job_endpoint=localhost:{self.job_port}", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{self.worker_port}"]

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in sorted(self.directory.glob("*.log")))

    def _start(self, name: str, module: str, *args: str) -> int:
        env = subprocess_env()
        # The worker pool starts each SDK worker as `python -c ...`, found on PATH (Beam's
        # choice): that must be this interpreter, with Beam and shipyard.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=self.directory, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own group: the pool's workers are stopped too
        self._processes.append(process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ports = listening_ports(process.pid)
            if ports:
                return min(ports)
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} before "
                                   f"listening:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen within {START_TIMEOUT_S:.0f} s:\n"
                                   f"{self.logs()}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(STOP_TIMEOUT_S)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass  # gone already, or killed below
            # SIGKILL whatever of its group is left (a worker the pool started), and wait
            # until the kernel has torn it down.
            kill_session(process)
        self._processes.clear()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process PID listens on, read from /proc: its socket inodes matched
    against the kernel's TCP tables."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        return set()  # exited
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
