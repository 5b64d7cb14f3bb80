"""Benches that cannot rot: each benchmark in bench/ runs in its smoke mode (`--smoke`: a ~1 MiB
model or 200 examples, one repeat, no idle waits) as the command a person would type, through
the same code path as a real run, shipyard side and baseline side, and prints its result
document. These tests check that the document is there, whole and readable: its keys, and that
its ratios are finite positive numbers. Never how fast anything is: smoke-sized figures measure
nothing (bench/README.md has the real runs).

Each bench is its own process (about 1-2 minutes each on 2 cores: each imports TensorFlow and
starts verifier processes that import it again). runtime_check.py's smoke mode never creates the
~1.3 GB serving-runtime environment: it skips its first-use side, and its cached side too when
the environment is not in the cache, and says why in the document's "skipped".
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from support.paths import REPO_ROOT

TIMEOUT_S = 900  # per bench; a smoke run takes 1-2 minutes here


def run_smoke(bench: str) -> dict:
    env = dict(os.environ)
    if bench == "runtime_check.py":
        env.pop("SHIPYARD_SERVING_RUNTIME", None)  # it chooses each side's runtime itself
    else:
        env["SHIPYARD_SERVING_RUNTIME"] = "none"
    done = subprocess.run([sys.executable, f"bench/{bench}", "--smoke", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    stderr_tail = "\n".join(done.stderr.splitlines()[-30:])
    assert done.returncode == 0, f"bench/{bench} --smoke exited {done.returncode}:\n{stderr_tail}"
    try:
        return json.loads(done.stdout)  # the JSON alone on stdout
    except json.JSONDecodeError as err:
        raise AssertionError(f"bench/{bench} --smoke --json printed more than JSON ({err}):\n"
                             f"{done.stdout[:2000]}") from None


def assert_finite_positive(figures: dict) -> None:
    for name, value in figures.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)


def test_export_bench_smoke():
    doc = run_smoke("export.py")

    assert set(doc) == {"model", "smoke", "repeat", "loadavg_before", "baseline", "shipyard",
                        "ratios", "peak_rss_mib", "runs"}
    assert doc["smoke"] is True and doc["repeat"] == 1
    assert doc["model"]["weights_mib"] < 2
    assert set(doc["baseline"]) == {"export_s", "fresh_load_wall_s", "fresh_import_s",
                                    "fresh_load_s", "cp_s", "total_s", "bytes",
                                    "child_peak_rss_mib"}
    assert set(doc["shipyard"]) == {"wall_s", "export_s", "verify_s", "verifier_load_s",
                                    "bytes", "verifier_peak_rss_mib", "hash_files_s",
                                    "hash_checkpoint_s", "hash_wait_s",
                                    "reference_peak_rss_mib", "reference_load_s",
                                    "export_loader"}
    # The smoke model has no layer the optimized load cannot handle.
    assert doc["shipyard"]["export_loader"] == ["shipyard optimized load (keras_loading)"]
    # The hashing passes ran and were timed (the wrappers saw them).
    assert_finite_positive({k: doc["shipyard"][k] for k in ("hash_files_s",
                                                            "hash_checkpoint_s")})
    # The hashing runs beside the verification; the wait after it can be 0, never negative.
    assert 0 <= doc["shipyard"]["hash_wait_s"] < 60
    assert set(doc["ratios"]) == {"wall_vs_export_plus_fresh_load", "export_vs_raw_export",
                                  "verifier_life_vs_fresh_load_wall", "bytes_vs_raw"}
    assert_finite_positive(doc["ratios"])
    assert [len(doc["runs"][side]) for side in ("baseline", "shipyard")] == [1, 1]
    # The parents' peaks, each measured in a fresh process, are there and plausible (a
    # process that imported TensorFlow holds well over 100 MiB).
    peaks = doc["peak_rss_mib"]
    assert all(peaks[k] > 100 for k in ("parent_fresh_process", "raw_export_fresh_process",
                                        "verifier_child", "baseline_loader_child",
                                        "reference_child")), peaks
    assert peaks["sum_of_peaks_shipyard"] == pytest.approx(
        peaks["parent_fresh_process"] + peaks["verifier_child"] + peaks["reference_child"])
    assert peaks["sum_of_peaks_raw"] == pytest.approx(
        peaks["raw_export_fresh_process"] + peaks["baseline_loader_child"])


def test_register_bench_smoke():
    doc = run_smoke("register.py")

    assert set(doc) == {"smoke", "repeat", "model_mib", "export", "register", "ratios", "runs"}
    assert doc["smoke"] is True and doc["repeat"] == 1
    assert set(doc["export"]) == {"seconds", "written", "version_bytes",
                                  "written_over_saved_model"}
    assert set(doc["register"]) == {"seconds", "written", "version_bytes", "artifact_bytes",
                                    "artifact_new_bytes", "written_over_saved_model"}
    assert set(doc["ratios"]) == {"register_vs_export_seconds", "register_vs_export_written",
                                  "register_written_over_saved_model",
                                  "savedmodel_copies_on_disk"}
    assert_finite_positive(doc["ratios"])
    assert [len(doc["runs"][side]) for side in ("export", "register")] == [1, 1]
    for run in doc["runs"]["register"]:
        assert_finite_positive({"written_over_saved_model": run["written_over_saved_model"]})
        # Each inode once: may be 0 when every artifact file is a link to the version's.
        assert isinstance(run["artifact_new_bytes"], int) and run["artifact_new_bytes"] >= 0
