"""Benchmark: shipyard's export+verify of a large Keras model against the raw baseline.

Both sides run alternately in this one process on the same .keras file, so machine noise hits
them alike. Usage and how to read the numbers: bench/README.md.
"""

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Same environment as shipyard's verifier child, so both fresh processes do the same work.
CHILD_ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
LOADER = ("import json, sys, time; t0 = time.monotonic(); import tensorflow as tf; "
          "t1 = time.monotonic(); tf.saved_model.load(sys.argv[1]); t2 = time.monotonic(); "
          "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
          "print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, "
          "'peak_rss_mib': int(hwm.split()[1]) / 1024}))")
# The parent's peak, each side in a fresh process that loads the .keras file and exports it:
# shipyard's export_model (its verifier is a further child, measured above) against the raw
# load_model + model.export. Fresh, so nothing the bench process built is counted.
PARENT_PEAK = """
import json, sys
from pathlib import Path
side, model, out, width = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
if side == "raw":
    import keras
    keras.saving.load_model(model).export(str(out), verbose=False)
else:
    from shipyard.core.spec import parse_spec
    from shipyard.steps.export import ExportRequest, export_model
    spec = parse_spec({"endpoints": [{"name": "serve", "method": "call", "inputs": [
        {"name": "x", "shape": [None, width], "dtype": "float32"}]}]})
    export_model(ExportRequest(model=model, spec=spec, repo=out, name="bench-model"))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"peak_rss_mib": int(hwm.split()[1]) / 1024}))
"""
LAYERS = 8
MIB = 2**20
SMOKE_SIZE_MB = 1.0  # --smoke: ~1 MiB of float32 weights (8 x Dense(181))


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True):
    """While active, whatever is written to file descriptor 1 (by libraries, or by children
    that inherit it) goes to stderr instead, so that `--json` leaves the JSON alone on stdout."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def vm_hwm_mib(pid: str = "self") -> float:
    """A process's peak RSS (VmHWM) in MiB; for this process, since the last reset_peak()."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie has no memory left to report


def reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each phase gets its own peak
    # rather than the whole run's. It also lowers ru_maxrss, hence the running max in main().
    with contextlib.suppress(OSError):  # if refused, phase peaks are cumulative: upper bounds
        Path("/proc/self/clear_refs").write_text("5")


def watch_peak(pid: int, into: dict) -> None:
    """Samples a child's VmHWM every 20 ms into into["peak"] until the child is reaped.

    Why not ru_maxrss: Linux charges a child spawned by fork/vfork with the parent's RSS at that
    moment, so a child of this ~1 GiB process "peaks" at >= 1 GiB even if it is `true`.
    """
    def sample() -> None:
        with contextlib.suppress(OSError):  # raised once the child is reaped
            while True:
                into["peak"] = max(into.get("peak", 0.0), vm_hwm_mib(str(pid)))
                time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()


def build_model(path: Path, size_mb: float) -> tuple[int, int]:
    """Square Dense layers holding ~size_mb MiB of float32; saves it; returns (params, width)."""
    import keras

    width = max(8, int((size_mb * MIB / 4 / LAYERS) ** 0.5))
    hidden = inputs = keras.Input((width,), name="x")
    for i in range(LAYERS):
        hidden = keras.layers.Dense(width, activation="relu" if i < LAYERS - 1 else None)(hidden)
    model = keras.Model(inputs, hidden)
    model.save(path)
    return model.count_params(), width


def warm_up(tmp: Path) -> None:
    """Imports TF/Keras/shipyard and traces one tiny export, so the first timed repeat does
    not pay one-off costs the others don't (the TF import alone is ~15 s)."""
    import keras

    import shipyard.exporter.archive  # noqa: F401,E401
    import shipyard.exporter.reference
    import shipyard.exporter.source  # noqa: F401,E401
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).export(
        str(tmp / "warmup"), verbose=False)
    shutil.rmtree(tmp / "warmup")


def run_baseline(model_path: Path, work: Path) -> dict:
    import keras

    out, copy = work / "raw", work / "raw-copy"
    started = time.monotonic()
    keras.saving.load_model(model_path).export(str(out), verbose=False)
    export_s = time.monotonic() - started
    # End to end: interpreter start and TF import included, as in shipyard's verifier.
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", LOADER, str(out)], env=CHILD_ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    fresh_wall_s = time.monotonic() - started
    inner = json.loads(child.stdout)
    started = time.monotonic()
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    cp_s = time.monotonic() - started
    size = dir_bytes(out)
    shutil.rmtree(out), shutil.rmtree(copy)
    return {"export_s": export_s, "fresh_load_wall_s": fresh_wall_s,
            "fresh_import_s": inner["import_s"], "fresh_load_s": inner["load_s"],
            "cp_s": cp_s, "total_s": export_s + fresh_wall_s, "bytes": size,
            "child_peak_rss_mib": inner["peak_rss_mib"]}


def timing_hashes(into: dict) -> None:
    """Times shipyard's hashing passes in this process: sha256 of the source model and of every
    file for the manifest (sha256_file) and the digest of every checkpoint tensor for the
    fingerprint (exporter.archive.checkpoint_digests). Wrapped, not replaced: the work is the
    same."""
    import shipyard.core.manifest as manifest
    import shipyard.exporter.archive as archive
    import shipyard.exporter.source as source

    def timed(module, name: str) -> None:
        inner = getattr(module, name)

        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return inner(*args, **kwargs)
            finally:
                into[name] = into.get(name, 0.0) + time.monotonic() - started

        setattr(module, name, wrapper)

    timed(manifest, "sha256_file")
    timed(source, "sha256_file")  # the source model file's digest (its own import binding)
    timed(archive, "checkpoint_digests")


HASH_SECONDS: dict = {}


def run_shipyard(model_path: Path, work: Path, width: int) -> dict:
    from shipyard.core.spec import parse_spec
    from shipyard.exporter.verifier import start_verifier
    from shipyard.steps.export import ExportRequest, export_model

    spec = parse_spec({"endpoints": [{"name": "serve", "method": "call", "inputs": [
        {"name": "x", "shape": [None, width], "dtype": "float32"}]}]})
    repo = work / "repo"  # a fresh repository per repeat: always version 1, no compat check
    verifier_rss: dict = {}
    reference_rss: dict = {}

    def launch():  # shipyard's default launcher, plus a watch on its children's memory
        verifier = start_verifier()
        watch_peak(verifier.pid, verifier_rss)
        watch_peak(verifier.reference.pid, reference_rss)
        return verifier

    HASH_SECONDS.clear()
    started = time.monotonic()
    result = export_model(ExportRequest(model=model_path, spec=spec, repo=repo,
                                        name="bench-model"), launch_verifier=launch)
    wall_s = time.monotonic() - started
    hashing = dict(HASH_SECONDS)
    size = dir_bytes(Path(result.path))
    shutil.rmtree(repo)
    return {"wall_s": wall_s, "export_s": result.timings["export_seconds"],
            "verify_s": result.timings["verify_seconds"],
            "verifier_load_s": result.manifest.verification["load_seconds"], "bytes": size,
            "verifier_peak_rss_mib": verifier_rss.get("peak", 0.0),
            # the independent reference: Keras's own load_model in a process of its own
            "reference_peak_rss_mib": reference_rss.get("peak", 0.0),
            "reference_load_s": result.manifest.verification["reference"]["load_seconds"],
            "export_loader": result.manifest.verification["export_loader"],
            "hash_files_s": hashing.get("sha256_file", 0.0),
            "hash_checkpoint_s": hashing.get("checkpoint_digests", 0.0),
            "hash_wait_s": result.timings["hash_wait_seconds"]}


def parent_peaks(model_path: Path, work: Path, width: int) -> dict:
    """Peak RSS (MiB) of a fresh process exporting the model: shipyard's and the raw one's."""
    peaks = {}
    for side in ("shipyard", "raw"):
        out = work / f"parent-{side}"
        child = subprocess.run([sys.executable, "-c", PARENT_PEAK, side, str(model_path),
                                str(out), str(width)], env=CHILD_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True)
        peaks[side] = json.loads(child.stdout.splitlines()[-1])["peak_rss_mib"]
        shutil.rmtree(out)
    return peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; medians reported")
    parser.add_argument("--size-mb", type=float, default=130.0, help="float32 weights, MiB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--size-mb {SMOKE_SIZE_MB:g} --repeat 1: checks that the bench "
                             "still runs end to end; its figures measure nothing")
    args = parser.parse_args()
    if args.smoke:
        args.size_mb, args.repeat = SMOKE_SIZE_MB, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    # Other work on the machine skews both sides (on 2 cores, a lot): recorded, to check.
    load_before = os.getloadavg()[0]

    with stdout_to_stderr(args.json), \
            tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp_name:
        tmp = Path(tmp_name)
        warm_up(tmp)
        timing_hashes(HASH_SECONDS)
        model_path = tmp / "model.keras"
        params, width = build_model(model_path, args.size_mb)
        gc.collect()  # the built model (Keras objects hold cycles): at 4 GiB, 12 GB of RSS
        model_bytes = model_path.stat().st_size
        peak = {"setup": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        base, ship = [], []
        sides = (("shipyard", ship, lambda: run_shipyard(model_path, tmp, width)),
                 ("baseline", base, lambda: run_baseline(model_path, tmp)))
        for i in range(args.repeat):
            for name, runs, run in sides:
                reset_peak()
                runs.append(run())
                peak[name] = max(peak.get(name, 0.0), vm_hwm_mib())
                gc.collect()  # each side's models, before the next side or fresh process
            print(f"repeat {i + 1}/{args.repeat}: shipyard {ship[-1]['wall_s']:.1f} s, "
                  f"baseline {base[-1]['total_s']:.1f} s", file=sys.stderr)
        parents = parent_peaks(model_path, tmp, width)

    b = {k: statistics.median(r[k] for r in base) for k in base[0]}
    s = {k: statistics.median(r[k] for r in ship) for k in ship[0] if k != "export_loader"}
    s["export_loader"] = sorted({r["export_loader"] for r in ship})
    results = {
        "model": {"params": params, "width": width, "layers": LAYERS,
                  "weights_mib": params * 4 / MIB, "keras_file_bytes": model_bytes},
        "smoke": args.smoke, "repeat": args.repeat, "loadavg_before": load_before,
        "baseline": b, "shipyard": s,
        "ratios": {"wall_vs_export_plus_fresh_load": s["wall_s"] / b["total_s"],
                   "export_vs_raw_export": s["export_s"] / b["export_s"],
                   # The verifier starts with export_model, so it lives ~export_s + verify_s.
                   "verifier_life_vs_fresh_load_wall":
                       (s["export_s"] + s["verify_s"]) / b["fresh_load_wall_s"],
                   "bytes_vs_raw": s["bytes"] / b["bytes"]},
        "peak_rss_mib": {
            "self_ru_maxrss": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  *peak.values()),
            "self_by_phase": peak,
            "parent_fresh_process": parents["shipyard"],
            "raw_export_fresh_process": parents["raw"],
            "verifier_child": max(r["verifier_peak_rss_mib"] for r in ship),
            "reference_child": max(r["reference_peak_rss_mib"] for r in ship),
            # Every process of a side at its own peak, added up (an upper bound of what the
            # side needs at once: the peaks need not coincide).
            "sum_of_peaks_shipyard": parents["shipyard"]
                + max(r["verifier_peak_rss_mib"] for r in ship)
                + max(r["reference_peak_rss_mib"] for r in ship),
            "sum_of_peaks_raw": parents["raw"] + max(r["child_peak_rss_mib"] for r in base),
            "baseline_loader_child": max(r["child_peak_rss_mib"] for r in base),
            # Inflated: counts this process's RSS when each child was spawned (see watch_peak).
            "children_ru_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
        "runs": {"baseline": base, "shipyard": ship},
    }
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


def table(r: dict) -> str:
    m, b, s, mem = r["model"], r["baseline"], r["shipyard"], r["peak_rss_mib"]
    rows = [("baseline: load_model + model.export", b["export_s"]),
            ("baseline: fresh process import TF + load (wall)", b["fresh_load_wall_s"]),
            ("  of which TF import (timed in the child)", b["fresh_import_s"]),
            ("  of which tf.saved_model.load (timed in the child)", b["fresh_load_s"]),
            ("baseline: total (export + fresh-process load)", b["total_s"]),
            ("yardstick: cp -r of the raw export", b["cp_s"]),
            ("shipyard: export_model wall", s["wall_s"]),
            ("  timings.export_seconds", s["export_s"]),
            ("  timings.verify_seconds (incl. waiting on TF import)", s["verify_s"]),
            ("  verifier's own tf.saved_model.load", s["verifier_load_s"]),
            ("  reference process's keras.saving.load_model", s["reference_load_s"]),
            ("  hashing: sha256 of the files (manifest)", s["hash_files_s"]),
            ("  hashing: checkpoint tensor digests (fingerprint)", s["hash_checkpoint_s"]),
            ("  hashing: how long it outlasted the verification", s["hash_wait_s"])]
    phases = ", ".join(f"{k} {v:.0f}" for k, v in mem["self_by_phase"].items())
    return "\n".join(
        [f"model: {m['params']:,} params ({m['weights_mib']:.1f} MiB float32, {m['layers']} x "
         f"Dense({m['width']})), .keras file {m['keras_file_bytes'] / MIB:.1f} MiB; "
         f"median of {r['repeat']} repeats; load average before {r['loadavg_before']:.2f}"
         + (" (SMOKE RUN: these figures measure nothing)" if r["smoke"] else "")]
        + [f"  {label:<54} {seconds:8.2f} s" for label, seconds in rows]
        + [f"  {'bytes: raw export / shipyard version dir':<54} {b['bytes'] / MIB:8.1f} / "
           f"{s['bytes'] / MIB:.1f} MiB",
           "ratios (shipyard / baseline): "
           + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()),
           f"peak RSS MiB: this process {mem['self_ru_maxrss']:.0f} (by phase: {phases}); "
           f"verifier child {mem['verifier_child']:.0f}, baseline loader child "
           f"{mem['baseline_loader_child']:.0f} (own VmHWM; RUSAGE_CHILDREN says "
           f"{mem['children_ru_maxrss']:.0f}, which counts this process's RSS at spawn)",
           f"peak RSS MiB of a fresh process exporting the model: shipyard "
           f"{mem['parent_fresh_process']:.0f}, raw load_model + export "
           f"{mem['raw_export_fresh_process']:.0f} (weights {m['weights_mib']:.0f})",
           f"peak RSS MiB of the reference child (Keras's own load): "
           f"{mem['reference_child']:.0f}; every process at its peak, added up: shipyard "
           f"{mem['sum_of_peaks_shipyard']:.0f} (parent + verifier + reference), raw "
           f"{mem['sum_of_peaks_raw']:.0f} (export + fresh load); export loaded by "
           f"{', '.join(s['export_loader'])}"])


if __name__ == "__main__":
    sys.exit(main())
