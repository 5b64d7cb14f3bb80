"""`--runner` names and where the workers run (validation/runners.py): Beam's own registry of
runner names, read from the installed Beam; no pipeline is run."""

from __future__ import annotations

import os
import re

import pytest

from shipyard.core.errors import UsageError, cli_message
from shipyard.validation.runners import (
    DASK_RUNNER,
    DIRECT_RUNNER,
    absolute,
    absolute_option,
    is_direct,
    is_local,
    local_path_warnings,
    option_value,
    remote_workers,
    resolve_runner,
    runner_class,
    runner_path,
)

PORTABLE = "apache_beam.runners.portability.portable_runner.PortableRunner"
FLINK = "apache_beam.runners.portability.flink_runner.FlinkRunner"


@pytest.mark.parametrize("name", ["PortableRunner", "portable", "PORTABLERUNNER", PORTABLE,
                                  "FlinkRunner", "flink", "SparkRunner", "FnApiRunner"])
def test_registered_names_and_class_paths_resolve_as_beam_resolves_them(name):
    from apache_beam.runners.runner import create_runner

    assert type(resolve_runner(name)) is type(create_runner(name))


@pytest.mark.parametrize("name", ["DirectRunner", "direct", "directrunner", DIRECT_RUNNER])
def test_the_direct_runner_by_any_name_is_the_in_process_fn_api_runner(name):
    """Beam's own DirectRunner would try Prism first (a binary downloaded from GitHub)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    assert is_direct(name)
    assert type(resolve_runner(name)) is FnApiRunner


def test_other_runners_are_not_the_direct_runner():
    assert not is_direct("PortableRunner") and not is_direct("SwitchingDirectRunner")
    assert runner_path(" flink ") == FLINK


@pytest.mark.parametrize("name", ["Nope", "Flinkk", "", "dataflow-runner"])
def test_an_unknown_name_is_refused_naming_the_flag_the_name_and_the_accepted_forms(name):
    with pytest.raises(UsageError, match=rf"^runner {name!r}: not a Beam runner; pass one of "
                                         r"Beam's registered names \(.*DirectRunner.*"
                                         r"PortableRunner.*\) or the dotted path of a "
                                         r"PipelineRunner subclass \(package\.module\."
                                         r"ClassName\)") as caught:
        resolve_runner(name)
    assert caught.value.param == "runner" and caught.value.exit_code == 2
    assert cli_message(caught.value).startswith(f"--runner {name!r}: not a Beam runner")


@pytest.mark.parametrize("name", ["DaskRunner", "dask", "daskrunner", DASK_RUNNER])
def test_the_dask_runner_is_refused_naming_what_beams_dask_translation_lacks(name):
    with pytest.raises(UsageError, match=r"Beam's DaskRunner cannot run the validation "
                                         r"pipeline: its Dask translation .* has no "
                                         r"translation of the Read primitive .* sends every "
                                         r"output of a ParDo with side outputs to each "
                                         r"consumer, and drops what a DoFn emits in "
                                         r"finish_bundle") as caught:
        runner_class(name)
    assert cli_message(caught.value).startswith(f"--runner {name}: ")


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_package.module.Runner",
     r"^runner no_such_package\.module\.Runner: cannot import no_such_package\.module: "
     r"No module named 'no_such_package'"),
    ("apache_beam.runners.runner.NoSuchRunner",
     r"^runner apache_beam\.runners\.runner\.NoSuchRunner: apache_beam\.runners\.runner has "
     r"no PipelineRunner subclass NoSuchRunner"),
    ("apache_beam.runners.runner.PipelineResult",  # a class, but no runner
     r"apache_beam\.runners\.runner has no PipelineRunner subclass PipelineResult"),
    ("os.path", r"^runner os\.path: os has no PipelineRunner subclass path"),
    ("package.module.", r"^runner 'package\.module\.': not a Beam runner"),
])
def test_a_class_path_that_names_no_runner_is_refused(name, message):
    with pytest.raises(UsageError, match=message):
        resolve_runner(name)


def test_a_class_path_of_a_runner_is_taken_as_it_is():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    path = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
    assert runner_path(path) == path and runner_class(path) is FnApiRunner


@pytest.mark.parametrize(("runner", "beam_args", "remote"), [
    ("DirectRunner", [], False),
    ("FnApiRunner", [], False),
    ("PrismRunner", [], False),  # Beam's local runners
    ("PortableRunner", ["--environment_type=LOOPBACK"], False),  # workers in this process
    ("PortableRunner", ["--environment_type", "LOOPBACK"], False),
    ("portable", ["--environment_type=beam:env:embedded_python_loopback:v1"], False),
    ("FlinkRunner", ["--environment_type=LOOPBACK"], False),
    ("PortableRunner", ["--environment_type=EXTERNAL", "--environment_config=h:5"], True),
    ("PortableRunner", ["--environment_type=PROCESS"], True),
    ("PortableRunner", [], True),  # DOCKER by default: containers see other files
    ("SparkRunner", [], True),
    ("DataflowRunner", ["--temp_location=gs://b/t"], True),
    ("tests_runners.MyRunner", [], True),  # unknown: may be anywhere
])
def test_which_runners_workers_may_run_elsewhere(runner, beam_args, remote):
    assert remote_workers(runner, beam_args) is remote


def test_local_paths_are_made_absolute_and_urls_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("model.keras") == str(tmp_path / "model.keras")
    assert absolute("data/part-*.csv") == str(tmp_path / "data" / "part-*.csv")  # still a glob
    assert absolute("/abs/repo") == "/abs/repo"
    for url in ("gs://b/repo", "s3://b/x/*.tfrecord", "file:///abs/repo", "memory://r"):
        assert absolute(url) == url
    assert is_local("repo") and is_local("/abs") and is_local("file:///abs")
    assert not is_local("gs://b/repo") and not is_local("s3://b")


def test_the_temp_location_among_beam_arguments_is_made_absolute_in_its_form(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    tmp = os.path.join(str(tmp_path), "tmp")
    assert absolute_option(("--temp_location", "tmp", "--x=1"), "--temp_location") == (
        "--temp_location", tmp, "--x=1")
    assert absolute_option(("--temp_location=tmp",), "--temp_location") == (
        f"--temp_location={tmp}",)
    assert absolute_option(("--temp_location=gs://b/t", "--other", "o"),
                           "--temp_location") == ("--temp_location=gs://b/t", "--other", "o")
    assert option_value(("--a", "1", "--temp_location", "t"), "--temp_location") == "t"
    assert option_value(("--temp_location=t",), "--temp_location") == "t"
    assert option_value(("--temp_location",), "--temp_location") is None


def test_a_local_path_for_remote_workers_is_warned_about_naming_its_flag():
    paths = [("--repo", "/work/repo"), ("--examples", "gs://b/ex/*.tfrecord"),
             ("--source", None), ("--temp_location", "file:///tmp/t")]
    warnings = local_path_warnings("PortableRunner", ["--environment_type=EXTERNAL"], paths)
    assert warnings == [
        f"{flag} {path} is a path on this machine, but the workers of --runner PortableRunner "
        "may run on other machines (or in containers) and not see it; use an object-store URL "
        "(gs://..., s3://...) that they can reach"
        for flag, path in (("--repo", "/work/repo"), ("--temp_location", "file:///tmp/t"))]
    assert local_path_warnings("DirectRunner", [], paths) == []
    assert local_path_warnings("PortableRunner", ["--environment_type=LOOPBACK"], paths) == []
    assert local_path_warnings("DataflowRunner", [], [("--repo", "gs://b/r")]) == []


def test_the_command_refuses_an_unknown_or_dask_runner_before_any_work(cli, tmp_path):
    """No repository is opened: the runner is checked while the arguments are read."""
    for runner, message in (
            ("Nope", r"error: --runner 'Nope': not a Beam runner; pass one of Beam's "
                     r"registered names"),
            ("DaskRunner", r"error: --runner DaskRunner: Beam's DaskRunner cannot run the "
                           r"validation pipeline: .* the Read primitive")):
        result = cli("validate", "--repo", str(tmp_path / "none"), "--name", "m",
                     "--version", "1", "--examples", "x.tfrecord", "--against", "2",
                     "--runner", runner)
        assert result.exit_code == 2, result.stderr
        assert re.search(message, result.stderr), result.stderr
        assert not (tmp_path / "none").exists()
