"""Benchmarks, importable so that ``fastamort bench <name>`` works from an installed wheel.

Each module compares backends side by side on the same inputs in one run, reports ratios
to the pure-PyTorch reference and to a physical limit measured in the same run, and writes
rows with device, dtype, shapes, versions and date. ``bench/bench_<name>.py`` in the
repository runs the same code and stores the results under ``bench/results/``.
"""

BENCHMARKS = ("gram", "ridge", "step", "regressor", "scale", "distributed")
