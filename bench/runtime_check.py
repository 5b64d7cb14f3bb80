"""Benchmark: what the serving-runtime check adds to an export, first run and cached.

Exports one Keras model (bench/export.py's square Dense stack) three ways in this one process,
alternating, and reports medians and ratios against the plain verifier (the baseline):

- plain:  export_model(..., serving_runtime="none"): the CPU-only verifier alone;
- cached: serving_runtime=<runtime>, its environment already in the cache;
- first:  serving_runtime=<runtime> with an empty shipyard cache (SHIPYARD_CACHE_DIR), so the
          environment is created; uv's own download cache stays as it is (see `--cold-uv`).

    .venv/bin/python bench/runtime_check.py             # --repeat 3 --size-mb 130 --runtime 2.19
    .venv/bin/python bench/runtime_check.py --json
    .venv/bin/python bench/runtime_check.py --smoke --json   # ~1 MiB, one repeat

--smoke never creates an environment: it skips the first-use side (that creates a new ~1.3 GB
environment), and the cached side too when the runtime's environment is not already in the
cache; the document's "skipped" says which and why.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from export import (  # noqa: E402 (bench/export.py)
    SMOKE_SIZE_MB,
    build_model,
    dir_bytes,
    stdout_to_stderr,
    warm_up,
)

KINDS = ("plain", "cached", "first")

SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 0], "dtype": "float32"}]}]}


def run(model_path: Path, work: Path, width: int, runtime: str, cache: Path | None) -> dict:
    from shipyard.core.manifest import read_manifest
    from shipyard.core.spec import parse_spec
    from shipyard.steps.export import ExportRequest, export_model

    spec = json.loads(json.dumps(SPEC))
    spec["endpoints"][0]["inputs"][0]["shape"] = [None, width]
    previous = os.environ.get("SHIPYARD_CACHE_DIR")
    if cache is not None:
        os.environ["SHIPYARD_CACHE_DIR"] = str(cache)
    try:
        started = time.monotonic()
        result = export_model(ExportRequest(model=model_path, spec=parse_spec(spec),
                                            repo=work / "repo", name="bench",
                                            serving_runtime=runtime))
        wall = time.monotonic() - started
    finally:
        if cache is not None:
            if previous is None:
                os.environ.pop("SHIPYARD_CACHE_DIR", None)
            else:
                os.environ["SHIPYARD_CACHE_DIR"] = previous
    runtimes = read_manifest(Path(result.path)).verification["runtimes"]
    shutil.rmtree(work / "repo")
    return {"wall_s": wall, **result.timings, "runtimes": runtimes}


def smoke_skips(runtime: str) -> dict[str, str]:
    """The sides a smoke run leaves out, with the reason: it never creates an environment."""
    from shipyard.exporter.runtime import _READY, environment_dir

    skipped = {"first": "smoke run: the first-use side creates a new TensorFlow environment "
                        "(~1.3 GB on disk), which is not smoke-sized"}
    env_dir = environment_dir(runtime)
    if not (env_dir / _READY).exists():
        skipped["cached"] = (f"smoke run: TensorFlow {runtime}'s environment is not in the "
                             f"cache ({env_dir}) and creating it (~1.3 GB) is not smoke-sized; "
                             "a run without --smoke creates it")
    return skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=130.0)
    parser.add_argument("--runtime", default="2.19")
    parser.add_argument("--cold-uv", action="store_true",
                        help="first run with an empty uv cache too (downloads the wheels)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--size-mb {SMOKE_SIZE_MB:g} --repeat 1, and no environment "
                             "created (sides that need one are skipped): checks that the bench "
                             "still runs end to end; its figures measure nothing")
    args = parser.parse_args()
    if args.smoke:
        args.size_mb, args.repeat = SMOKE_SIZE_MB, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loadavg = os.getloadavg()[0]
    skipped = smoke_skips(args.runtime) if args.smoke else {}
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS if kind not in skipped}
    environment_bytes = None
    with stdout_to_stderr(args.json), \
            tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        tmp = Path(tmp)
        model_path = tmp / "model.keras"
        params, width = build_model(model_path, args.size_mb)
        warm_up(tmp)
        if not args.smoke:  # (a smoke run uses the environment only if it is already there)
            # Make sure the cached environment exists before anything is timed.
            run(model_path, tmp, width, args.runtime, None)
        for index in range(args.repeat):
            if "plain" in rows:
                rows["plain"].append(run(model_path, tmp, width, "none", None))
            if "cached" in rows:
                rows["cached"].append(run(model_path, tmp, width, args.runtime, None))
            if "first" in rows:
                cache = tmp / f"cache-{index}"
                if args.cold_uv:
                    os.environ["UV_CACHE_DIR"] = str(tmp / f"uv-cache-{index}")
                rows["first"].append(run(model_path, tmp, width, args.runtime, cache))
                os.environ.pop("UV_CACHE_DIR", None)
                environment_bytes = dir_bytes(cache)
                shutil.rmtree(cache)

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    report = {
        "smoke": args.smoke,
        "machine": {"cores": os.cpu_count(), "loadavg_before": loadavg},
        "model": {"params": params, "size_mb": args.size_mb},
        "runtime": args.runtime, "repeat": args.repeat, "cold_uv": args.cold_uv,
        "skipped": skipped,
        "seconds": {kind: {"wall": median(kind, "wall_s"),
                           "export": median(kind, "export_seconds"),
                           "verify": median(kind, "verify_seconds")} for kind in rows},
        "ratios": {f"{kind}_vs_plain_wall": median(kind, "wall_s") / median("plain", "wall_s")
                   for kind in rows if kind != "plain"},
        "runtime_record": rows["cached"][-1]["runtimes"] if "cached" in rows else None,
        "environment_mib": None if environment_bytes is None else environment_bytes / 2**20,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if args.smoke:
        print("SMOKE RUN: these figures measure nothing")
    for kind, figures in report["seconds"].items():
        print(f"{kind:>6}: wall {figures['wall']:.2f} s (export {figures['export']:.2f} s, "
              f"verify {figures['verify']:.2f} s)")
    for kind, reason in skipped.items():
        print(f"{kind:>6}: skipped: {reason}")
    environment = ("" if report["environment_mib"] is None
                   else f"; environment {report['environment_mib']:.0f} MiB")
    print("ratios: " + ", ".join(f"{name} {value:.2f}" for name, value in report["ratios"].items())
          + f"{environment}; load avg before {loadavg:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
