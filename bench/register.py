"""What `shipyard register` costs on top of `shipyard export`, in the same run.

Both run in this process on the same ~130 MiB model (bench/export.py's builder), each with a
verifier started ahead of time so TensorFlow's import in the child is not what is measured.
Bytes written are this process's write() bytes (/proc/self/io `wchar`) plus what lands on disk
(the version directory and the MLflow artifact store). `written_over_saved_model` is register's
write() bytes over the SavedModel's (the published version directory): the goal on the
embedded store is at most 1.1. The embedded store's artifacts are hard links to the version's
files, so `artifact_bytes` (every file's size) counts the linked bytes again;
`artifact_new_bytes` counts each inode once and none the version directory already holds:
what the artifact store adds on disk.

    .venv/bin/python bench/register.py [--size-mb 130] [--repeat 2] [--json]
    .venv/bin/python bench/register.py --smoke --json   # ~1 MiB, one repeat, no waits
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

from export import (  # noqa: E402  (bench/export.py)
    SMOKE_SIZE_MB,
    build_model,
    dir_bytes,
    stdout_to_stderr,
)

MIB = 2**20
PREFETCH_WAIT_S = 20  # lets the prefetched verifier finish importing TensorFlow (not in smoke)
SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 0], "dtype": "float32"}]}]}


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def inode_sizes(root: Path) -> dict[tuple[int, int], int]:
    """{(st_dev, st_ino): st_size} of the files under root: a file hard-linked twice is one."""
    sizes = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sizes


def new_bytes(root: Path, already: Path) -> int:
    """Bytes of the files under root, each inode once, leaving out the inodes `already` holds
    (hard links to its files take no space)."""
    held = inode_sizes(already)
    return sum(size for key, size in inode_sizes(root).items() if key not in held)


def measure(fn) -> tuple[float, int, object]:
    before, started = written_bytes(), time.monotonic()
    result = fn()
    return time.monotonic() - started, written_bytes() - before, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=130)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--size-mb {SMOKE_SIZE_MB:g} --repeat 1 and no waits for the "
                             "prefetched verifier: checks that the bench still runs end to end; "
                             "its figures measure nothing")
    args = parser.parse_args()
    if args.smoke:
        args.size_mb, args.repeat = SMOKE_SIZE_MB, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    wait_s = 0 if args.smoke else PREFETCH_WAIT_S

    with stdout_to_stderr(args.json):
        rows = run(args.size_mb, args.repeat, wait_s)
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for side, runs in rows.items()}
    report = {
        "smoke": args.smoke, "repeat": args.repeat,
        "model_mib": round(med["export"]["version_bytes"] / MIB, 1),
        "export": med["export"], "register": med["register"],
        "ratios": {
            "register_vs_export_seconds": med["register"]["seconds"] / med["export"]["seconds"],
            "register_vs_export_written": med["register"]["written"] / med["export"]["written"],
            # The goal on the embedded store: at most 1.1.
            "register_written_over_saved_model": med["register"]["written_over_saved_model"],
            # Each inode once: hard links between the version and the artifact store are one copy.
            "savedmodel_copies_on_disk": (med["register"]["version_bytes"]
                                          + med["register"]["artifact_new_bytes"])
                                         / med["register"]["version_bytes"],
        },
        "runs": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        e, r, q = report["export"], report["register"], report["ratios"]
        print(f"SavedModel: {report['model_mib']} MiB (median of {args.repeat})"
              + (" (SMOKE RUN: these figures measure nothing)" if args.smoke else ""))
        print(f"export:   {e['seconds']:6.2f} s, {e['written'] / MIB:7.1f} MiB written")
        print(f"register: {r['seconds']:6.2f} s, {r['written'] / MIB:7.1f} MiB written, "
              f"artifact store {r['artifact_bytes'] / MIB:.1f} MiB "
              f"({r['artifact_new_bytes'] / MIB:.1f} MiB not linked to the version)")
        print(f"ratios: time {q['register_vs_export_seconds']:.2f}x, bytes written "
              f"{q['register_vs_export_written']:.2f}x, register written / SavedModel "
              f"{q['register_written_over_saved_model']:.2f}x, SavedModel copies on disk "
              f"{q['savedmodel_copies_on_disk']:.2f}")
    return 0


def run(size_mb: float, repeat: int, wait_s: float) -> dict[str, list[dict]]:
    from shipyard.core.spec import parse_spec
    from shipyard.exporter.verifier import PrefetchingLauncher
    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.export import ExportRequest, export_model
    from shipyard.steps.register import register_model

    launcher = PrefetchingLauncher()
    rows: dict[str, list[dict]] = {"export": [], "register": []}
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
            work = Path(tmp)
            model_path = work / "model.keras"
            _, width = build_model(model_path, size_mb)
            spec_data = json.loads(json.dumps(SPEC))
            spec_data["endpoints"][0]["inputs"][0]["shape"] = [None, width]
            spec = parse_spec(spec_data)
            for i in range(repeat):
                time.sleep(wait_s)  # let the prefetched verifier finish importing TensorFlow
                repo = work / f"export-{i}"
                seconds, written, result = measure(lambda repo=repo: export_model(
                    ExportRequest(model_path, spec, repo, "bench"), launch_verifier=launcher))
                version = Path(result.path)
                rows["export"].append({"seconds": seconds, "written": written,
                                       "version_bytes": dir_bytes(version),
                                       "written_over_saved_model": written / dir_bytes(version)})
                time.sleep(wait_s)
                home = work / f"home-{i}"
                location = RegistryLocation.resolve(home=home)
                repo = work / f"register-{i}"
                seconds, written, result = measure(
                    lambda repo=repo, location=location: register_model(
                        ExportRequest(model_path, spec, repo, "bench"), location,
                        launch_verifier=launcher))
                version, store = Path(result.path), home / "mlartifacts"
                rows["register"].append({
                    "seconds": seconds, "written": written, "version_bytes": dir_bytes(version),
                    # Every file's size: hard links to the version's files counted again.
                    "artifact_bytes": dir_bytes(store),
                    "artifact_new_bytes": new_bytes(store, already=version),
                    "written_over_saved_model": written / dir_bytes(version)})
    finally:
        launcher.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
