"""Which runner `--runner` names, and where its workers run.

`in-process` (IN_PROCESS, the default) is shipyard's own loop (in_process.py), not Beam.

`--runner` takes what Beam's own `--runner` option takes (`create_runner` in
apache_beam/runners/runner.py): one of Beam's registered runner names, in any case and with
or without the `Runner` suffix (`DataflowRunner`, `dataflow`, `PortableRunner`, `flink`), or
the dotted path of a PipelineRunner subclass (`package.module.ClassName`). The names are read
from Beam (`StandardOptions.ALL_KNOWN_RUNNERS`), not copied, so they follow the installed Beam.

Two decisions differ from Beam's:
- The DirectRunner is Beam's in-process FnApiRunner. Beam's own DirectRunner first tries
  Prism, downloading its binary from GitHub where it can: a validation must not depend on
  that, nor behave differently on a machine with internet access. The FnApiRunner honours
  --direct_num_workers and --direct_running_mode.
- The DaskRunner is refused: Beam's Dask translation cannot run this pipeline (DASK_REFUSAL).

Beam is imported inside the functions: the CLI stays cheap until a command runs.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

from shipyard.core.errors import UsageError

IN_PROCESS = "in-process"
DIRECT_RUNNER = "apache_beam.runners.direct.direct_runner.DirectRunner"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
PORTABLE_RUNNER = "apache_beam.runners.portability.portable_runner.PortableRunner"
# Beam's portable runners that hand the pipeline to a job server (Flink, Spark and Kafka
# Streams through their job servers; PortableRunner to any). Where their workers run is told
# by --environment_type. Prism is portable too but runs on this machine (a local runner).
_JOB_SERVER_RUNNERS = frozenset({
    PORTABLE_RUNNER,
    "apache_beam.runners.portability.flink_runner.FlinkRunner",
    "apache_beam.runners.portability.spark_runner.SparkRunner",
    "apache_beam.runners.portability.kafka_streams_runner.KafkaStreamsRunner",
})
# LOOPBACK runs the workers in the process that submitted the job (Beam starts a worker pool
# in it), so they share its machine and working directory. Beam accepts the name or the URN.
_LOOPBACK = ("LOOPBACK", "beam:env:embedded_python_loopback:v1")

DASK_REFUSAL = (
    "Beam's DaskRunner cannot run the validation pipeline: its Dask translation "
    "(apache_beam/runners/dask/transform_evaluator.py) has no translation of the Read "
    "primitive that ReadFromTFRecord and ReadFromText expand to (the first ParDo gets no "
    "Dask bag: AttributeError: 'NoneType' object has no attribute 'map'), sends every output "
    "of a ParDo with side outputs to each consumer, and drops what a DoFn emits in "
    "finish_bundle (BatchElements' last batch). Use DirectRunner, PortableRunner, "
    "FlinkRunner, SparkRunner or DataflowRunner")

_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def is_in_process(name: str) -> bool:
    """Whether `--runner NAME` is the in-process runner rather than a Beam runner: in any
    case, with a hyphen, an underscore or nothing between the words (`In-Process`,
    `in_process`, `InProcess`)."""
    return re.sub(r"[\s_-]", "", name.lower()) == IN_PROCESS.replace("-", "")


def runner_path(name: str) -> str:
    """The dotted class path `--runner NAME` stands for, as Beam's `create_runner` reads the
    name; UsageError (param `runner`) for a name Beam does not register, a malformed path, or
    the DaskRunner. Imports nothing but Beam's option definitions."""
    from apache_beam.options.pipeline_options import StandardOptions

    registered = {path.rsplit(".", 1)[-1].lower(): path
                  for path in StandardOptions.ALL_KNOWN_RUNNERS}
    # Beam does not register the DaskRunner's short name (it refuses `--runner DaskRunner`);
    # it is named here only so that it gets the reason it cannot run, not "unknown".
    named = {**registered, DASK_RUNNER.rsplit(".", 1)[-1].lower(): DASK_RUNNER}
    key = name.strip().lower()
    path = named.get(key) or named.get(key + "runner")
    if path is None and _DOTTED_PATH.match(name.strip()):
        path = name.strip()
    if path is None:
        raise UsageError(
            f"runner {name!r}: not a Beam runner; pass one of Beam's registered names "
            f"({', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}; any case, `Runner` may be "
            "left out) or the dotted path of a PipelineRunner subclass "
            f"(package.module.ClassName); or {IN_PROCESS} (the default: this process, "
            "without Beam)", param="runner")
    if path == DASK_RUNNER:
        raise UsageError(f"runner {name}: {DASK_REFUSAL}", param="runner")
    return path


def is_direct(name: str) -> bool:
    """Whether `--runner NAME` is the DirectRunner (run in process, as FnApiRunner)."""
    return runner_path(name) == DIRECT_RUNNER


def runner_class(name: str) -> type:
    """The runner class `--runner NAME` stands for, imported: UsageError (param `runner`)
    when its module does not import (Dataflow's without apache_beam[gcp]), it has no such
    class, the class is no PipelineRunner, or it is a DaskRunner."""
    import importlib
    import sys

    from apache_beam.runners.runner import PipelineRunner

    path = runner_path(name)
    module_name, class_name = path.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"runner {name}: cannot import {module_name}: {err}"
                         + (" (pip install 'apache_beam[gcp]')" if "dataflow" in path.lower()
                            else ""), param="runner") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, PipelineRunner)):
        raise UsageError(f"runner {name}: {module_name} has no PipelineRunner subclass "
                         f"{class_name}", param="runner")
    # A subclass of the DaskRunner has its translation. Its module is loaded only if the
    # class derives from it (it needs dask installed to import at all).
    dask = sys.modules.get(DASK_RUNNER.rsplit(".", 1)[0])
    if dask is not None and issubclass(cls, dask.DaskRunner):
        raise UsageError(f"runner {name}: {DASK_REFUSAL}", param="runner")
    return cls


def resolve_runner(name: str) -> Any:
    """The runner object for `beam.Pipeline(runner=...)`: the FnApiRunner for the
    DirectRunner (see the module's docstring), else an instance of the class Beam's
    `--runner NAME` names. UsageError (param `runner`, exit 2) for a name that names none."""
    if is_direct(name):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return runner_class(name)()


def remote_workers(runner: str, beam_args: Sequence[str]) -> bool:
    """Whether the workers of `--runner RUNNER` with these Beam arguments may run on other
    machines (or in containers) and so not see this machine's files: every runner but Beam's
    local ones, and a job-server runner (PortableRunner, Flink, Spark) unless its
    --environment_type is LOOPBACK (workers in this process)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    path = runner_path(runner)
    if path.rsplit(".", 1)[-1] in _local_runner_names() and path.startswith("apache_beam."):
        return False
    if path in _JOB_SERVER_RUNNERS:
        environment = PipelineOptions(list(beam_args)).view_as(PortableOptions).environment_type
        return environment not in _LOOPBACK
    return True


def _local_runner_names() -> tuple[str, ...]:
    from apache_beam.options.pipeline_options import StandardOptions

    return tuple(StandardOptions.LOCAL_RUNNERS)


def is_local(location: str) -> bool:
    """A path on this machine's file system: no URL scheme, or a file:// URL."""
    return "://" not in location or location.startswith("file://")


def absolute(location: str) -> str:
    """LOCATION with a relative local path made absolute against the working directory;
    URLs (gs://, s3://, file://, ...) as they are. A glob stays a glob."""
    return location if "://" in location else os.path.abspath(location)


def option_value(args: Sequence[str], flag: str) -> str | None:
    """The value of FLAG among Beam arguments, given as `FLAG=VALUE` or `FLAG VALUE`."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def absolute_option(args: Sequence[str], flag: str) -> tuple[str, ...]:
    """Beam arguments with the local path FLAG gives made absolute (`absolute`), in the form
    it was given in; the others as they are."""
    result = list(args)
    for i, arg in enumerate(result):
        if arg.startswith(flag + "="):
            result[i] = f"{flag}={absolute(arg.split('=', 1)[1])}"
        elif arg == flag and i + 1 < len(result):
            result[i + 1] = absolute(result[i + 1])
    return tuple(result)


def local_path_warnings(runner: str, beam_args: Sequence[str],
                        paths: Iterable[tuple[str, str | None]]) -> list[str]:
    """One warning for each (flag, location) that is a local path the workers read or write
    while they may run on other machines (`remote_workers`)."""
    given = [(flag, location) for flag, location in paths
             if location is not None and is_local(location)]
    if not given or not remote_workers(runner, beam_args):
        return []
    return [f"{flag} {location} is a path on this machine, but the workers of --runner "
            f"{runner} may run on other machines (or in containers) and not see it; use an "
            "object-store URL (gs://..., s3://...) that they can reach"
            for flag, location in given]
