"""What `shipyard validate` costs per example, against a plain Python loop, in the same run.

One exported model (an MLP on 32 float features, 2 outputs), N tf.Example records in one
TFRecord file. Both sides do the same work: read and parse every record, run the version's
endpoint in batches of 256 and the source Keras model on the same batch, and compare them.

- **baseline**: a Python loop in this process (tf.data to read, protobuf to parse, numpy to
  batch), calling the same SavedModel signature and Keras model.
- **shipyard**: `validate_version_on_examples` (the CLI's code path) on Beam's DirectRunner,
  with shipyard's default (no Beam arguments: shipyard picks one in-memory worker), then with
  those settings given explicitly (`--direct_num_workers=1 --direct_running_mode=in_memory`):
  the same configuration twice, so their difference shows the run-to-run noise.

Reported: examples per second for each, and shipyard / baseline as a ratio (above 1: Beam is
faster). TensorFlow is imported and both models loaded once before anything is timed; the Beam
side loads them again in its DoFn's setup, which is part of what it costs.

    .venv/bin/python bench/validate.py [--examples 20000] [--repeat 2] [--json]
    .venv/bin/python bench/validate.py --smoke --json   # 200 examples, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export import stdout_to_stderr  # noqa: E402  (bench/export.py)

SMOKE_EXAMPLES = 200
FEATURES = 32
BATCH = 256
SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, FEATURES],
                                   "dtype": "float32"}]}]}


def build(workdir: Path, examples: int) -> tuple[Path, Path, Path]:
    import keras
    import numpy as np
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
    data = np.random.default_rng(0).standard_normal((examples, FEATURES)).astype("float32")
    records = workdir / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for row in data:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
                .SerializeToString())
    return source, repo, records


def baseline(source: Path, version_dir: Path, records: Path) -> tuple[float, int, float]:
    import keras
    import numpy as np
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serve"]
    model = keras.saving.load_model(source)
    started = time.perf_counter()
    count, worst, rows = 0, 0.0, []

    def run(batch: list) -> float:
        x = np.stack(batch)
        got = next(iter(signature(x=tf.constant(x)).values())).numpy()
        expected = np.asarray(model(x, training=False))
        return float(np.abs(got - expected).max())

    for raw in tf.data.TFRecordDataset(str(records)).as_numpy_iterator():
        example = tf.train.Example.FromString(raw)
        rows.append(np.asarray(example.features.feature["x"].float_list.value, np.float32))
        count += 1
        if len(rows) == BATCH:
            worst = max(worst, run(rows))
            rows = []
    if rows:
        worst = max(worst, run(rows))
    return time.perf_counter() - started, count, worst


def shipyard(repo: Path, source: Path, records: Path, beam_args: list[str]
             ) -> tuple[float, int, float]:
    from shipyard.repository import open_repository
    from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

    request = ValidateRequest(name="bench", version=1, examples=str(records), source=source,
                              beam_args=tuple(beam_args))
    started = time.perf_counter()
    doc = validate_version_on_examples(open_repository(repo), request,
                                       read_aliases=lambda name: {})
    return (time.perf_counter() - started, doc.examples,
            max(f["max_abs_error"] for f in doc.parity.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--examples {SMOKE_EXAMPLES} --repeat 1: checks that the bench "
                             "still runs end to end; its figures measure nothing")
    args = parser.parse_args()
    if args.smoke:
        args.examples, args.repeat = SMOKE_EXAMPLES, 1
    if args.repeat < 1 or args.examples < 1:
        parser.error("--repeat and --examples must be at least 1")
    sides = {"baseline_loop": None, "beam_default": [],
             "beam_1_worker": ["--direct_num_workers=1", "--direct_running_mode=in_memory"]}
    with stdout_to_stderr(args.json), tempfile.TemporaryDirectory() as tmp:
        source, repo, records = build(Path(tmp), args.examples)
        version_dir = repo / "bench" / "1"
        baseline(source, version_dir, records)  # warm-up: traces the functions once
        seconds: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.repeat):
            for side, beam_args in sides.items():
                if beam_args is None:
                    took, count, worst = baseline(source, version_dir, records)
                else:
                    took, count, worst = shipyard(repo, source, records, beam_args)
                assert count == args.examples and worst < 1e-3, (side, count, worst)
                seconds[side].append(took)
    result = {"smoke": args.smoke, "examples": args.examples, "repeat": args.repeat,
              "loadavg_before": os.getloadavg()[0], "seconds": {}, "examples_per_second": {},
              "ratio_vs_baseline": {}}
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    for side, median in medians.items():
        result["seconds"][side] = round(median, 2)
        result["examples_per_second"][side] = round(args.examples / median)
        # From the unrounded medians, to 3 significant digits: a ratio far below 1 (as in a
        # smoke run, where Beam's start-up dominates) must not round to 0.
        result["ratio_vs_baseline"][side] = float(f"{medians['baseline_loop'] / median:.3g}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.smoke:
            print("SMOKE RUN: these figures measure nothing")
        for side in sides:
            print(f"{side:>16}: {result['seconds'][side]:7.2f} s, "
                  f"{result['examples_per_second'][side]:>7} examples/s, "
                  f"ratio {result['ratio_vs_baseline'][side]}", file=sys.stdout)


if __name__ == "__main__":
    main()
