"""The benchmark code itself runs (tiny sizes; timings are not checked, only that they exist)."""

from __future__ import annotations

import pytest
import torch

from fastamort.benchmarks.step import bench_one


def test_step_benchmark_times_every_section():
    """The section timer wraps the functions the learner really calls (a renamed one fails)."""
    rows = bench_one(64, 2, torch.device("cpu"), repeats=1)
    assert [r["impl"] for r in rows] == ["fast", "torch", "authors"]
    for row in rows[:2]:
        sections = ("sleep_s", "gram_s", "solve_s", "backward_s")
        for section in sections:
            assert row[section] is not None and row[section] > 0, (row["impl"], section)
        assert row["time_s"] >= sum(row[s] for s in sections)
    for row in rows:  # the floor is measured in the same run and reported on every row
        assert row["floor_s"] == row["floor_cholesky_s"] + row["floor_gemm_s"] > 0
        assert row["x_floor"] == row["time_s"] / row["floor_s"]


def test_regressor_large_n_rows_run_every_implementation():
    """The large-n rows of ``fastamort bench regressor``: each implementation in its own
    subprocess, with its time, test RMSE and peak resident memory."""
    pytest.importorskip("sklearn")
    from fastamort.benchmarks.regressor import LARGE_COLUMNS, bench_large

    row = bench_large(600, 1.0, m=40, n_test=200, with_sklearn=True, with_exact=True)
    assert row["case"] == "nystrom" and set(LARGE_COLUMNS) <= set(row)
    for key in ("fastamort_s", "sklearn_s", "exact_s", "peak_rss_mib", "sklearn_peak_rss_mib"):
        assert row[key] > 0, key
    # the same centres and the same α: the same model as the pipeline, near exact KRR
    assert abs(row["rmse_rel_vs_sklearn"]) < 1e-3
    assert 0 < row["rmse"] < 2 * row["exact_rmse"]
    assert row["iters"] >= 1
