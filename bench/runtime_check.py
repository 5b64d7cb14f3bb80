"""Benchmark: what the serving-runtime check adds to an export, first run and cached.

Exports one Keras model (bench/export.py's square Dense stack) three ways in this one process,
alternating, and reports medians and ratios against the plain verifier (the baseline):

- plain:  export_model(..., serving_runtime="none"): the CPU-only verifier alone;
- cached: serving_runtime=<runtime>, its environment already in the cache;
- first:  serving_runtime=<runtime> with an empty shipyard cache (SHIPYARD_CACHE_DIR), so the
          environment is created; uv's own download cache stays as it is (see `--cold-uv`).

    .venv/bin/python bench/runtime_check.py             # --repeat 3 --size-mb 130 --runtime 2.19
    .venv/bin/python bench/runtime_check.py --json
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
from export import build_model, dir_bytes, warm_up  # noqa: E402 (bench/export.py)

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=130.0)
    parser.add_argument("--runtime", default="2.19")
    parser.add_argument("--cold-uv", action="store_true",
                        help="first run with an empty uv cache too (downloads the wheels)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loadavg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        tmp = Path(tmp)
        model_path = tmp / "model.keras"
        params, width = build_model(model_path, args.size_mb)
        warm_up(tmp)
        # Make sure the cached environment exists before anything is timed.
        run(model_path, tmp, width, args.runtime, None)
        rows: dict[str, list[dict]] = {"plain": [], "cached": [], "first": []}
        for index in range(args.repeat):
            rows["plain"].append(run(model_path, tmp, width, "none", None))
            rows["cached"].append(run(model_path, tmp, width, args.runtime, None))
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
        "machine": {"cores": os.cpu_count(), "loadavg_before": loadavg},
        "model": {"params": params, "size_mb": args.size_mb},
        "runtime": args.runtime, "repeat": args.repeat, "cold_uv": args.cold_uv,
        "seconds": {kind: {"wall": median(kind, "wall_s"),
                           "export": median(kind, "export_seconds"),
                           "verify": median(kind, "verify_seconds")} for kind in rows},
        "ratios": {"cached_vs_plain_wall": median("cached", "wall_s") / median("plain", "wall_s"),
                   "first_vs_plain_wall": median("first", "wall_s") / median("plain", "wall_s")},
        "runtime_record": rows["cached"][-1]["runtimes"],
        "environment_mib": environment_bytes / 2**20,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for kind, figures in report["seconds"].items():
        print(f"{kind:>6}: wall {figures['wall']:.2f} s (export {figures['export']:.2f} s, "
              f"verify {figures['verify']:.2f} s)")
    print(f"ratios: cached/plain {report['ratios']['cached_vs_plain_wall']:.2f}, "
          f"first/plain {report['ratios']['first_vs_plain_wall']:.2f}; "
          f"environment {report['environment_mib']:.0f} MiB; load avg before {loadavg:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
