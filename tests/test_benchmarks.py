"""The benchmark code itself runs (tiny sizes; timings are not checked, only that they exist)."""

from __future__ import annotations

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
