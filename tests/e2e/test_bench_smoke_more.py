"""The runtime-check and validate benches in their smoke mode: see test_bench_smoke.py, which
holds the shared runner. Two files so that the four smoke runs (about 4 minutes of test time
on a loaded 2-core machine) can go to two workers."""

from __future__ import annotations

from e2e.test_bench_smoke import assert_finite_positive, run_smoke


def test_runtime_check_bench_smoke():
    doc = run_smoke("runtime_check.py")

    assert set(doc) == {"smoke", "machine", "model", "runtime", "repeat", "cold_uv", "skipped",
                        "seconds", "ratios", "runtime_record", "environment_mib"}
    assert doc["smoke"] is True and doc["repeat"] == 1
    # A smoke run creates no environment: the first-use side is always left out, with why.
    assert "first" in doc["skipped"]
    assert all(isinstance(reason, str) and reason for reason in doc["skipped"].values())
    ran = [kind for kind in ("plain", "cached", "first") if kind not in doc["skipped"]]
    assert "plain" in ran
    assert list(doc["seconds"]) == ran
    assert set(doc["ratios"]) == {f"{kind}_vs_plain_wall" for kind in ran if kind != "plain"}
    assert_finite_positive(doc["ratios"])
    if "cached" in ran:
        assert doc["runtime_record"][doc["runtime"]]["status"] == "passed"
    else:
        assert doc["runtime_record"] is None


def test_validate_bench_smoke():
    doc = run_smoke("validate.py")

    assert set(doc) == {"smoke", "examples", "repeat", "loadavg_before", "seconds",
                        "examples_per_second", "ratio_vs_tfdata", "ratio_vs_loop",
                        "peak_rss_mib", "rss_before_mib", "load_seconds"}
    assert doc["smoke"] is True and doc["repeat"] == 1 and doc["examples"] == 200
    sides = {"tfdata", "validate", "validate_beam", "python_loop"}
    for figure in ("seconds", "examples_per_second", "ratio_vs_tfdata", "ratio_vs_loop",
                   "peak_rss_mib", "rss_before_mib", "load_seconds"):
        assert set(doc[figure]) == sides, figure
    assert_finite_positive(doc["ratio_vs_tfdata"])
    assert_finite_positive(doc["ratio_vs_loop"])
    assert_finite_positive(doc["peak_rss_mib"])
    # validate loads its models inside its timed run (on either runner); the other sides
    # before it.
    assert doc["load_seconds"]["validate"] is None and doc["load_seconds"]["validate_beam"] is None
    assert doc["load_seconds"]["tfdata"] > 0 and doc["load_seconds"]["python_loop"] > 0
