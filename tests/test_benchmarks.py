"""The benchmarks run end to end (tiny sizes); their figures are printed, never asserted on."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_stack_benchmark_runs_through_the_real_stack(model_file):
    env = {**os.environ, "TRAINING_DATASETS": str(ROOT / "tests" / "fixtures" / "isic")}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.stack", "--model", str(model_file), "--uploads", "6", "--clients", "2",
         "--single", "2", "--during-build", "2", "--history-cases", "60", "--history-requests", "3", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    burst = out["burst"]
    assert burst["done"] == burst["uploads"] == 6 and burst["http_errors"] == 0 and burst["failed"] == 0
    assert out["single_upload"]["n"] == 2 and out["history"]["cases"] == 60
    assert out["during_build"]["n"] == 2 and out["during_build"]["first_s"] > 0  # while the builder built
    assert out["build"]["ended"] and out["build"]["built"]  # the uploads "after the build" came after it
    # What the worker ran for each phase's uploads, counted from their predictions.
    assert sum(out["during_build"]["runtimes"].values()) == 2 and sum(out["single_upload"]["runtimes"].values()) == 2
    # One query plan for the history page, whatever the page: no N+1.
    assert len(set(out["history"]["queries"].values())) == 1
    assert out["dashboard"]["p50_ms"] > 0 and out["heatmaps"]["done"] + out["heatmaps"]["failed"] >= 6
    assert out["worker_peak_rss_mb"]


def test_upload_cost_benchmark_compares_the_full_size_copy_with_the_bounded_one():
    result = subprocess.run([sys.executable, "-m", "benchmarks.uploads", "--side", "2600", "--parallel", "2", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    baseline, bounded = json.loads(result.stdout).values()
    assert baseline["stored_px"] == [2600, 2600] and bounded["stored_px"] == [2048, 2048]
    for run in (baseline, bounded):
        assert run["cases"] == 2 and run["upload_statuses"] == [200, 200] and run["web_peak_rss_mb"] > 0


def test_retrieval_benchmark_prints_latency_against_the_brute_force_baseline():
    out = subprocess.run([sys.executable, "-m", "benchmarks.retrieval", "--sizes", "500", "--queries", "5", "--json"],
                         capture_output=True, text=True, check=True).stdout
    (row,) = json.loads(out)
    assert row["n"] == 500 and row["same_neighbours"] == "5/5"
    assert set(row["exact_numpy_ms"]) == {"p50", "p95", "max"} and row["sklearn_brute_ms"]["p95"] > 0


def test_the_referral_month_reviews_in_the_order_it_is_given():
    """Three referrals arrive before the first slot; one slot a day: the smallest key first, whatever arrived first."""
    import numpy as np

    from benchmarks.referrals import simulate

    waits = simulate(np.array([0.0, 0.1, 0.2]), [(3,), (1,), (2,)], slots=1, days=3)
    assert list(np.argsort(waits)) == [1, 2, 0] and np.isfinite(waits).all()
    fifo = simulate(np.array([0.0, 0.1, 0.2]), [(0.0,), (0.1,), (0.2,)], slots=1, days=3)
    assert list(np.argsort(fifo)) == [0, 1, 2]


@pytest.mark.skipif(not list(__import__("pathlib").Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                    reason="PostgreSQL is not installed (make test installs it)")
def test_the_triage_page_benchmark_runs_on_a_throwaway_postgres():
    result = subprocess.run([sys.executable, "-m", "benchmarks.referrals", "--skip-month", "--open", "60",
                             "--requests", "3", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
    assert result.returncode == 0, result.stderr[-3000:]
    page = json.loads(result.stdout)["triage_page"]
    assert page["database"] == "postgresql" and page["open_referrals"] == 60
    assert page["first page"]["queries"] == page["last page"]["queries"]  # one plan whatever the page
