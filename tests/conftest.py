"""Shared fixtures: devices and backends to test, float64 ground truth, tolerances."""

from __future__ import annotations

import os
import subprocess
import sys

# OpenMP threads that sleep when they wait, set before torch (and its libgomp) loads, here and
# in the pytest-xdist workers started from this process. By default libgomp's waiting threads
# spin: with `pytest -n 2` on two cores, each worker's barriers then spin while the other
# worker holds the cores, and barrier-heavy code (LAPACK's eigh, the tiled Cholesky) ran 30 to
# 100 times slower than alone (measured: tests/test_estimator.py and test_hyperparameters.py
# with -n 2 took over 15 minutes, 32 s with this). Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from fastamort._backends import cpp_unavailable_reason, triton_unavailable_reason
from fastamort.ops.kernel_math import kernel_from_s

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()


# Long tests first. README's `pytest -n 2 --maxschedchunk 1` hands tests out one at a time in
# this order, so the sm_90 compile groups, the wheel and compiler builds and the statistical
# tests (up to a minute each) start early and overlap with the many short ones, instead of
# one worker running them alone at the end while the other idles.
LONG_MODULES = ("test_triton_offline.py",)


def runs_long(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None or item.path.name in LONG_MODULES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if runs_long(item) else 1)  # stable: order kept otherwise


def backends_for(device: str) -> list[str]:
    """Backends that must be tested on ``device`` in this environment."""
    out = ["torch"]
    if device == "cpu" and cpp_unavailable_reason() is None:
        out.append("cpp")
    if triton_unavailable_reason() is None and (device == "cuda" or INTERPRETER):
        out.append("triton")
    return out


DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DEVICE_BACKENDS = [(d, b) for d in DEVICES for b in backends_for(d)]


def backend_param(device: str, backend: str):
    marks = [pytest.mark.triton] if backend == "triton" else []
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    return pytest.param(device, backend, marks=marks, id=f"{device}-{backend}")


BACKEND_PARAMS = [backend_param(d, b) for d, b in DEVICE_BACKENDS]


def gradcheck_on(backend: str, fn, inputs, **kwargs) -> bool:
    """torch's float64 gradcheck of ``fn`` at ``inputs``; for the Triton backend in fast mode
    (the Jacobian's projection on random directions instead of every entry: each launch through
    the interpreter costs about 0.1 s, and the full check took a minute per case)."""
    return torch.autograd.gradcheck(fn, inputs, fast_mode=backend == "triton", **kwargs)


def exact_scaled_distance(
    x: torch.Tensor, y: torch.Tensor, kernel: str, ell: float
) -> torch.Tensor:
    """float64 ground truth by direct differences (no GEMM-trick cancellation)."""
    diff = x.double().unsqueeze(-2) - y.double().unsqueeze(-3)
    if kernel == "laplacian":
        return diff.abs().sum(-1) / ell
    return diff.pow(2).sum(-1) / ell**2


def exact_gram(x: torch.Tensor, y: torch.Tensor | None, kernel: str, ell: float) -> torch.Tensor:
    return kernel_from_s(exact_scaled_distance(x, x if y is None else y, kernel, ell), kernel)


def gram_fused_max_d() -> int:
    """The C++ engine's largest fused-route D (it depends on the BLAS found), or 64."""
    if cpp_unavailable_reason() is not None:
        return 64
    from fastamort import _C

    return _C.gram_fused_max_d()


FUSED_MAX_D = gram_fused_max_d()


# Problems large enough for the C++ engine's tiled routes (M·N·D above 2^20), each with the
# route gram_forward must take (fastamort._C.gram_route): D just past the direct switch, rows
# not a multiple of the fused tile's 6 and blocks of them, columns ragged against its 8/16-wide
# groups, 128-column chunks and per-block column limit, D at the top of the fused route and
# just past it (BLAS GEMM; gram_matmul and the backward passes take the GEMM route whenever
# gram takes either).
CPP_ROUTE_SHAPES = [
    (263, 1031, 5, "fused"),
    (97, 1031, 17, "fused"),
    (131, 1029, FUSED_MAX_D, "fused"),
    (129, 257, FUSED_MAX_D + 1, "gemm"),
    (131, 1029, 64, "fused" if FUSED_MAX_D >= 64 else "gemm"),
]
# Y = X: the fused route computes the whole matrix, the GEMM route mirrors its blocks.
CPP_ROUTE_SYMMETRIC = [(263, 17, "fused"), (1031, 5, "fused"), (300, 65, "gemm")]


# Error floors per dtype for the accuracy rule
#   err(backend) <= 2 * err(torch reference in the same dtype) + FLOOR[dtype]
FLOOR = {torch.float32: 2e-6, torch.float64: 1e-13}


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def run_quick(name: str, out) -> dict[str, float]:
    """Runs experiment ``name`` with ``--quick`` (seed 0) into ``out`` and checks the contract
    every experiment keeps: metrics.json, config.json and results.md written, the flat part of
    metrics.json equal to the returned metrics, every metric a finite number. Returns them."""
    import json
    import math

    from fastamort.experiments import run_experiment

    metrics = run_experiment(name, quick=True, seed=0, out=out, progress=False)
    for file in ("metrics.json", "config.json", "results.md"):
        assert (out / file).stat().st_size > 0, file
    on_disk = json.loads((out / "metrics.json").read_text())
    flat = {k: v for k, v in on_disk.items() if k not in ("details", "environment")}
    assert flat == pytest.approx(metrics)
    bad = {k: v for k, v in flat.items() if not isinstance(v, (int, float)) or not math.isfinite(v)}
    assert not bad, bad
    assert json.loads((out / "config.json").read_text())["quick"] is True
    return flat


def replay_gpu_autotuning(monkeypatch, tuner, configs) -> None:
    """Makes the Triton autotuner ``tuner`` tune over ``configs`` as on a GPU, under the
    interpreter: each config runs once on the launch's own buffers (the GPU benchmarks it there),
    the last one is timed fastest and then runs again as the chosen config. A kernel that reads
    what it writes, or leaves a config's extra output behind, then gives a wrong answer."""
    import itertools

    times = itertools.cycle(range(len(configs), 0, -1))

    def one_run(kernel_call, quantiles):
        kernel_call()
        t = float(next(times))
        return [t, t, t]

    monkeypatch.setattr(tuner, "configs", list(configs))
    monkeypatch.setattr(tuner, "cache", {})
    # do_bench is a cached_property that asks the (absent) GPU driver: set the cached value
    monkeypatch.setitem(tuner.__dict__, "do_bench", one_run)


#: Run before a :func:`run_without_sklearn` script: every import of scikit-learn fails, and
#: ``expect_value_error(*calls)`` checks that each call raises ValueError.
WITHOUT_SKLEARN_PRELUDE = r"""
import sys
sys.modules["sklearn"] = None  # any import of sklearn now fails


def expect_value_error(*calls):
    for call in calls:
        try:
            call()
        except ValueError:
            pass
        else:
            raise AssertionError("no ValueError")
"""


def run_without_sklearn(script: str) -> list[str]:
    """The stdout lines of ``script`` run in a fresh interpreter where scikit-learn cannot be
    imported (after :data:`WITHOUT_SKLEARN_PRELUDE`); it must exit with status 0."""
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_SKLEARN_PRELUDE + script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()
