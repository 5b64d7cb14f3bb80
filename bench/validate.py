"""What `shipyard validate` costs per example, against the tf.data pipeline a user would write,
in the same run; a plain Python loop is kept as a second reference.

One exported model (an MLP on 32 float features, 2 outputs), N tf.Example records in one
TFRecord file. Every side does the same work: read and parse every record, run the version's
endpoint and the source Keras model on the same batches of 256, and compare them.

- **tfdata** (the baseline): `TFRecordDataset -> batch(256) -> map(tf.io.parse_example)`, then
  per batch the SavedModel signature and the Keras model (through `tf.function`, as Keras's
  own `predict` and validate's DoFn call it), compared with validate's own `compare_batch` at
  the export's default tolerance.
- **validate**: `validate_version_on_examples` (the CLI's code path) with shipyard's
  defaults: the in-process runner, batches of 1024.
- **validate_beam**: the same on Beam's DirectRunner (`--runner DirectRunner`: one in-memory
  worker), the pipeline any Beam runner runs.
- **python_loop**: tf.data to read, protobuf to parse each record, numpy to batch, the
  signature and the Keras model called eagerly (the reference of the earlier runs), compared
  the same way.

Each side runs in its own process (`--side`), one after another (a smoke run starts them at
once), so that its peak memory
(ru_maxrss) is its own: that process imports TensorFlow and loads the models before its timer
starts (tfdata and python_loop also trace their functions on one batch first); validate loads
and traces them again inside its run, which is part of what it costs. `rss_before_mib` is the
process's resident size when its timer starts: peak minus that is what the work itself held.

Reported: examples per second for each side, each side against tfdata (`ratio_vs_tfdata`,
above 1: faster than tf.data) and against the loop (`ratio_vs_loop`), peak memory per side.

    .venv/bin/python bench/validate.py [--examples 100000] [--repeat 3] [--json]
    .venv/bin/python bench/validate.py --smoke --json   # 200 examples, one repeat, sides at once
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export import stdout_to_stderr  # noqa: E402  (bench/export.py)

SMOKE_EXAMPLES = 200
FEATURES = 32
BATCH = 256
TOLERANCE = 1e-5  # the export's default atol and rtol, which validate compares with
SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, FEATURES],
                                   "dtype": "float32"}]}]}


def build(workdir: Path, examples: int) -> None:
    import keras
    import tensorflow as tf

    from shipyard.core.spec import parse_spec
    from shipyard.steps.export import ExportRequest, export_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(256, "relu"),
                              keras.layers.Dense(256, "relu"), keras.layers.Dense(2)])
    source = workdir / "model.keras"
    model.save(source)
    repo = workdir / "repo"
    export_model(ExportRequest(model=source, spec=parse_spec(SPEC), repo=repo, name="bench"))
    # In chunks of 100,000 rows, so that writing 1,000,000 examples does not hold them all.
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(workdir / "examples.tfrecord")) as writer:
        for first in range(0, examples, 100_000):
            rows = rng.standard_normal((min(100_000, examples - first), FEATURES))
            for row in rows.astype("float32"):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
                    .SerializeToString())


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_LOAD_STARTED: list[float] = []


def _start_timer(state: dict[str, Any]) -> float:
    """Where a side's timed work starts. tfdata and python_loop report how long loading the
    models and the warm-up batch took before it (`load_seconds`), which the validate side
    does inside its time."""
    state["rss_before_mib"] = _rss_mib()
    now = time.perf_counter()
    state["load_seconds"] = now - _LOAD_STARTED[0] if _LOAD_STARTED else None
    return now


def _models(workdir: Path) -> tuple[Any, Any, Any]:
    import keras
    import tensorflow as tf

    _LOAD_STARTED.append(time.perf_counter())  # after the imports, as on the validate side
    signature = tf.saved_model.load(str(workdir / "repo" / "bench" / "1")).signatures["serve"]
    model = keras.saving.load_model(workdir / "model.keras")
    return tf, signature, model


def _compare(reference: Any, got: Any, totals: dict[str, Any]) -> None:
    from shipyard.validation import stats as stats_lib

    figures = stats_lib.compare_batch({"out": np.asarray(reference)}, {"out": np.asarray(got)},
                                      TOLERANCE, TOLERANCE)
    totals["stats"] = stats_lib.merge(totals["stats"], {"parity": figures})


def side_tfdata(workdir: Path) -> tuple[int, dict[str, Any], float]:
    tf, signature, model = _models(workdir)
    source = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    features = {"x": tf.io.FixedLenFeature([FEATURES], tf.float32)}

    def run(totals: dict[str, Any] | None = None) -> int:
        dataset = (tf.data.TFRecordDataset(str(workdir / "examples.tfrecord")).batch(BATCH)
                   .map(lambda records: tf.io.parse_example(records, features)))
        count = 0
        for parsed in dataset:
            got = next(iter(signature(x=parsed["x"]).values())).numpy()
            expected = source(parsed["x"]).numpy()
            if totals is None:
                return count  # warm-up: one batch traces both functions
            _compare(expected, got, totals)
            count += len(got)
        return count

    run()
    totals: dict[str, Any] = {"stats": {}}
    started = _start_timer(totals)
    count = run(totals)
    return count, {**totals["stats"]["parity"]["out"], **totals}, started


def side_python_loop(workdir: Path) -> tuple[int, dict[str, Any], float]:
    tf, signature, model = _models(workdir)

    def run(totals: dict[str, Any] | None) -> int:
        count, rows = 0, []

        def call(batch: list) -> None:
            x = np.stack(batch)
            got = next(iter(signature(x=tf.constant(x)).values())).numpy()
            expected = np.asarray(model(x, training=False))
            if totals is not None:
                _compare(expected, got, totals)

        for raw in tf.data.TFRecordDataset(str(workdir / "examples.tfrecord")
                                           ).as_numpy_iterator():
            example = tf.train.Example.FromString(raw)
            rows.append(np.asarray(example.features.feature["x"].float_list.value,
                                   np.float32))
            count += 1
            if len(rows) == BATCH:
                call(rows)
                rows = []
                if totals is None:
                    return count  # warm-up: one batch traces the signature
        if rows:
            call(rows)
        return count

    run(None)
    totals: dict[str, Any] = {"stats": {}}
    started = _start_timer(totals)
    count = run(totals)
    return count, {**totals["stats"]["parity"]["out"], **totals}, started


def side_validate(workdir: Path, runner: str = "in-process") -> tuple[int, dict[str, Any], float]:
    import tensorflow  # noqa: F401  (imported before the timer, as on the other sides)

    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    request = ValidateRequest(name="bench", version=1,
                              examples=str(workdir / "examples.tfrecord"),
                              source=workdir / "model.keras", runner=runner)
    state: dict[str, Any] = {}
    started = _start_timer(state)
    doc = validate_version_on_examples(open_repository(workdir / "repo"), request,
                                       read_aliases=lambda name: {})
    figures = next(iter(doc.parity.values()))  # the model's one output
    return doc.examples, {"max_abs": figures["max_abs_error"],
                          "within": round(figures["within_tolerance"] * doc.examples),
                          **state}, started


SIDES = {"tfdata": side_tfdata, "validate": side_validate,
         "validate_beam": lambda workdir: side_validate(workdir, "DirectRunner"),
         "python_loop": side_python_loop}


def run_side(side: str, workdir: Path, result: Path) -> None:
    """In its own process: one side, timed; its figures and peak memory to `result`."""
    import resource

    with stdout_to_stderr(True):
        count, figures, started = SIDES[side](workdir)
        took = time.perf_counter() - started
    result.write_text(json.dumps({
        "seconds": took, "count": count, "max_abs": figures["max_abs"],
        "within": figures["within"], "rss_before_mib": figures["rss_before_mib"],
        "load_seconds": figures["load_seconds"],
        # ru_maxrss: KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--examples {SMOKE_EXAMPLES} --repeat 1: checks that the bench "
                             "still runs end to end; its figures measure nothing")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child: one side on the parent's files
        run_side(args.side, args.workdir, args.result)
        return
    if args.smoke:
        args.examples, args.repeat = SMOKE_EXAMPLES, 1
    if args.repeat < 1 or args.examples < 1:
        parser.error("--repeat and --examples must be at least 1")
    loadavg_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with stdout_to_stderr(args.json), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, args.examples)
        for _ in range(args.repeat):
            # One side after another, so that none slows another; a smoke run (whose figures
            # measure nothing) starts them all at once, to take less of a CI machine's time.
            for group in ([list(SIDES)] if args.smoke else [[side] for side in SIDES]):
                children = {side: subprocess.Popen(
                    [sys.executable, __file__, "--side", side, "--workdir", str(workdir),
                     "--result", str(workdir / f"{side}.json")]) for side in group}
                for side, child in children.items():
                    if child.wait() != 0:
                        raise SystemExit(f"the {side} side failed (exit {child.returncode})")
                    run = json.loads((workdir / f"{side}.json").read_text())
                    # Same examples, same comparison: every side must see them all, within
                    # the tolerance (the export is faithful).
                    assert run["count"] == args.examples and run["within"] == args.examples, (
                        side, run)
                    runs[side].append(run)
    medians = {side: statistics.median(r["seconds"] for r in rs) for side, rs in runs.items()}
    result = {"smoke": args.smoke, "examples": args.examples, "repeat": args.repeat,
              "loadavg_before": loadavg_before, "seconds": {}, "examples_per_second": {},
              "ratio_vs_tfdata": {}, "ratio_vs_loop": {}, "peak_rss_mib": {},
              "rss_before_mib": {}, "load_seconds": {}}
    for side, median in medians.items():
        result["seconds"][side] = round(median, 2)
        result["examples_per_second"][side] = round(args.examples / median)
        # From the unrounded medians, to 3 significant digits: a ratio far below 1 (as in a
        # smoke run, where Beam's start-up dominates) must not round to 0.
        result["ratio_vs_tfdata"][side] = float(f"{medians['tfdata'] / median:.3g}")
        result["ratio_vs_loop"][side] = float(f"{medians['python_loop'] / median:.3g}")
        # The largest over the repeats: what a machine must have for the side.
        result["peak_rss_mib"][side] = round(max(r["peak_rss_mib"] for r in runs[side]))
        result["rss_before_mib"][side] = round(max(r["rss_before_mib"] for r in runs[side]))
        loads = [r["load_seconds"] for r in runs[side] if r["load_seconds"] is not None]
        result["load_seconds"][side] = round(statistics.median(loads), 2) if loads else None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.smoke:
            print("SMOKE RUN: these figures measure nothing")
        for side in SIDES:
            print(f"{side:>12}: {result['seconds'][side]:7.2f} s, "
                  f"{result['examples_per_second'][side]:>7} examples/s, "
                  f"vs tfdata {result['ratio_vs_tfdata'][side]}, "
                  f"vs loop {result['ratio_vs_loop'][side]}, "
                  f"peak {result['peak_rss_mib'][side]} MiB "
                  f"({result['rss_before_mib'][side]} MiB at the start)")


if __name__ == "__main__":
    main()
