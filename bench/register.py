"""What `shipyard register` costs on top of `shipyard export`, in the same run.

Both run in this process on the same ~130 MiB model (bench/export.py's builder), each with a
verifier started ahead of time so TensorFlow's import in the child is not what is measured.
Bytes written are this process's write() bytes (/proc/self/io `wchar`) plus what lands on disk
(the version directory and the MLflow artifact store), to check the rule that the SavedModel's
bytes are written at most twice: once by the export, once into the artifact store.

    .venv/bin/python bench/register.py [--size-mb 130] [--repeat 2] [--json]
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

from export import build_model, dir_bytes  # noqa: E402  (bench/export.py)

MIB = 2**20
SPEC = {"endpoints": [{"name": "serve", "method": "call",
                       "inputs": [{"name": "x", "shape": [None, 0], "dtype": "float32"}]}]}


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def measure(fn) -> tuple[float, int, object]:
    before, started = written_bytes(), time.monotonic()
    result = fn()
    return time.monotonic() - started, written_bytes() - before, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=130)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from shipyard.core.spec import parse_spec
    from shipyard.exporter.verifier import PrefetchingLauncher
    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.export import ExportRequest, export_model
    from shipyard.steps.register import register_model

    launcher = PrefetchingLauncher()
    rows = {"export": [], "register": []}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        work = Path(tmp)
        model_path = work / "model.keras"
        _, width = build_model(model_path, args.size_mb)
        spec_data = json.loads(json.dumps(SPEC))
        spec_data["endpoints"][0]["inputs"][0]["shape"] = [None, width]
        spec = parse_spec(spec_data)
        for i in range(args.repeat):
            time.sleep(20)  # let the prefetched verifier finish importing TensorFlow
            repo = work / f"export-{i}"
            seconds, written, result = measure(lambda repo=repo: export_model(
                ExportRequest(model_path, spec, repo, "bench"), launch_verifier=launcher))
            rows["export"].append({"seconds": seconds, "written": written,
                                   "version_bytes": dir_bytes(Path(result.path))})
            time.sleep(20)
            home = work / f"home-{i}"
            location = RegistryLocation.resolve(home=home)
            repo = work / f"register-{i}"
            seconds, written, result = measure(lambda repo=repo, location=location: register_model(
                ExportRequest(model_path, spec, repo, "bench"), location,
                launch_verifier=launcher))
            rows["register"].append({"seconds": seconds, "written": written,
                                     "version_bytes": dir_bytes(Path(result.path)),
                                     "artifact_bytes": dir_bytes(home / "mlartifacts")})
    launcher.close()
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for side, runs in rows.items()}
    report = {
        "model_mib": round(med["export"]["version_bytes"] / MIB, 1),
        "export": med["export"], "register": med["register"],
        "ratios": {
            "register_vs_export_seconds": med["register"]["seconds"] / med["export"]["seconds"],
            "register_vs_export_written": med["register"]["written"] / med["export"]["written"],
            "savedmodel_copies_on_disk": (med["register"]["version_bytes"]
                                          + med["register"]["artifact_bytes"])
                                         / med["register"]["version_bytes"],
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        e, r, q = report["export"], report["register"], report["ratios"]
        print(f"SavedModel: {report['model_mib']} MiB (median of {args.repeat})")
        print(f"export:   {e['seconds']:6.2f} s, {e['written'] / MIB:7.1f} MiB written")
        print(f"register: {r['seconds']:6.2f} s, {r['written'] / MIB:7.1f} MiB written, "
              f"artifact store {r['artifact_bytes'] / MIB:.1f} MiB")
        print(f"ratios: time {q['register_vs_export_seconds']:.2f}x, bytes written "
              f"{q['register_vs_export_written']:.2f}x, SavedModel copies on disk "
              f"{q['savedmodel_copies_on_disk']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
