"""Benchmark of ``fastamort.KernelRidge`` (fit + predict) against scikit-learn and plain torch.

In one run, on the same data (standard normal X, d = 16, y = sin of a random projection plus
noise, RBF kernel with gamma = 1/d, alpha = 1, one target; n training points and
n_test = n // 4 test points, an 80/20 split), the time of ``fit(X, y)`` + ``predict(X_test)``:

* ``fastamort``: :class:`fastamort.KernelRidge` (NumPy in/out on the CPU, the drop-in use;
  torch tensors already on the GPU for ``--device cuda``), compute dtype = the row's dtype;
* ``sklearn``: :class:`sklearn.kernel_ridge.KernelRidge` on NumPy arrays of the row's dtype
  (on the host CPU, also in a CUDA run);
* ``torch``: :func:`fastamort._dual_solve.kernel_ridge_ref`, what one writes in plain
  torch (``cdist`` Gram, Cholesky, ``K_test @ c``) on the same device and dtype.

n ∈ {1000, 2000, 4000, 8000} (``--quick``: {500, 1000}), float64 and float32; a CUDA run adds
n = 32768 (scikit-learn timed once there). The three run in alternating rounds and each
time is the best of its rounds (the 2-core development machine is shared: alternating exposes
them to the same load, and the minimum is the least disturbed estimate); each row also gives
the fastamort fit/predict split and the largest prediction difference to scikit-learn,
relative to the largest prediction. scikit-learn comes with ``pip install fastamort[bench]``;
without it its columns stay empty.

Large n (rows with ``case="nystrom"``, CPU only, with scikit-learn installed):
:class:`fastamort.NystromKernelRidge` on ``make_friedman1(n + 10⁴, n_features=8, noise=1.0,
random_state=0)`` (the last 10⁴ rows are the test set), rbf kernel with γ = 1, m = 2000
centres, α ∈ {1, 0.1}, n ∈ {2·10⁴, 10⁵, 10⁶} (``--quick``: n = 3000, m = 200, α = 1), with its
default dtype (float32 kernel values; at n = 10⁵ also float64 ones), against scikit-learn's
``make_pipeline(Nystroem(n_components=m, gamma=γ, random_state=0), Ridge(alpha=α,
fit_intercept=False))`` (n ≤ 10⁵: it stores the n × m features, 16 GB at n = 10⁶) and exact
:class:`fastamort.KernelRidge` (n ≤ 2·10⁴). Each fit + predict runs once, in a fresh
subprocess, which reports its time, test RMSE and peak resident memory (the whole process,
interpreter and data included: ``VmHWM`` of /proc/self/status).

Run as ``fastamort bench regressor [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastamort._dual_solve import kernel_ridge_ref

from ._harness import _read_status_kib, bench_main, environment, print_table, sync

D = 16
ALPHA = 1.0
ONCE_S = 10.0  # an implementation slower than this is timed once (scikit-learn at n = 32768)
# Pause before each timed call: BLAS/OpenMP worker threads of the previous implementation keep
# spinning for a while after it returns (OpenBLAS ~0.1 s), which would slow the next one down
# on 2 cores. No user code runs two libraries back to back like this, so it is not counted.
COOL_S = 0.3


def _interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    rounds: int = 5,
    budget_s: float = 20.0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Best wall time of each function, timed in alternating rounds.

    On a shared machine the load changes from second to second; alternating the
    implementations (in a rotating order, each call after a ``COOL_S`` pause) exposes them
    to the same load, and the minimum over the rounds is the least disturbed estimate. The
    first call of each (warm-up) counts as a sample too; functions slower than ``ONCE_S``
    run only that once.
    """
    best: dict[str, float] = {}
    outs: dict[str, Any] = {}
    names = list(fns)
    for name in names:
        sync(device)
        time.sleep(COOL_S)
        t0 = time.perf_counter()
        outs[name] = fns[name]()
        sync(device)
        best[name] = time.perf_counter() - t0
    repeat = [n for n in names if best[n] < ONCE_S]
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
        order = repeat[r % len(repeat) :] + repeat[: r % len(repeat)] if repeat else []
        for name in order:
            sync(device)
            time.sleep(COOL_S)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def _best(fn: Callable[[], Any], device: torch.device, repeats: int = 5) -> float:
    return _interleaved({"f": fn}, device, rounds=repeats, budget_s=5.0)[0]["f"]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + n // 4, D))
    w = rng.standard_normal(D) / np.sqrt(D)
    y = np.sin(3 * x @ w) + 0.1 * rng.standard_normal(x.shape[0])
    return x[:n], y[:n], x[n:]


def _have_sklearn() -> bool:
    try:
        import sklearn.kernel_ridge  # noqa: F401
    except ImportError:
        return False
    return True


def bench_one(n: int, dtype: torch.dtype, device: torch.device, *, time_sklearn: bool = True):
    from fastamort import KernelRidge

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x, y, x_test = (a.astype(np_dtype) for a in _data(n))
    gamma = 1.0 / D
    model = KernelRidge(alpha=ALPHA, kernel="rbf", gamma=gamma, dtype=dtype)
    if device.type == "cpu":
        fx, fy, ft = x, y, x_test
    else:
        fx, fy, ft = (torch.from_numpy(a).to(device) for a in (x, y, x_test))

    def fast():
        return model.fit(fx, fy).predict(ft)

    tx, ty, tt = (torch.from_numpy(a).to(device) for a in (x, y, x_test))
    fns: dict[str, Callable[[], Any]] = {
        "fastamort": fast,
        "torch": lambda: kernel_ridge_ref(tx, ty, tt, ALPHA, gamma),
    }
    if time_sklearn:
        from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

        sk = SkKernelRidge(alpha=ALPHA, kernel="rbf", gamma=gamma)
        fns["sklearn"] = lambda: sk.fit(x, y).predict(x_test)
    best, outs = _interleaved(fns, device)
    model.fit(fx, fy)
    t_fit = _best(lambda: model.fit(fx, fy), device, repeats=3)
    t_predict = _best(lambda: model.predict(ft), device)

    row: dict[str, Any] = {
        "case": "exact",
        "n": n,
        "n_test": x_test.shape[0],
        "d": D,
        "kernel": "rbf",
        "dtype": str(dtype).replace("torch.", ""),
        "fastamort_s": best["fastamort"],
        "fit_s": t_fit,
        "predict_s": t_predict,
        "torch_s": best["torch"],
        "speedup_vs_torch": best["torch"] / best["fastamort"],
        "sklearn_s": None,
        "speedup_vs_sklearn": None,
        "max_rel_diff": None,
    }
    if time_sklearn:
        pred_fast, pred_sk = outs["fastamort"], outs["sklearn"]
        pf = pred_fast.cpu().numpy() if isinstance(pred_fast, torch.Tensor) else pred_fast
        row["sklearn_s"] = best["sklearn"]
        row["speedup_vs_sklearn"] = best["sklearn"] / best["fastamort"]
        row["max_rel_diff"] = float(
            np.abs(pf.astype(np.float64) - pred_sk).max() / np.abs(pred_sk).max()
        )
    return row


# --------------------------------------------------------------------------------------
# Large n: NystromKernelRidge against scikit-learn's Nystroem + Ridge pipeline
# --------------------------------------------------------------------------------------
LARGE_D = 8
_BSD = sys.platform == "darwin"  # ru_maxrss in bytes there, KiB on Linux
LARGE_M = 2000
LARGE_GAMMA = 1.0
LARGE_N_TEST = 10_000
LARGE_ALPHAS = (1.0, 0.1)
LARGE_SIZES = (20_000, 100_000, 1_000_000)
#: The pipeline stores the n × m float64 features (16 GB at n = 10⁶, m = 2000).
SKLEARN_MAX_N = 100_000
#: Exact KernelRidge stores the n × n Gram matrix (3.2 GB at n = 2·10⁴).
EXACT_MAX_N = 20_000
#: The size at which the rows also time float64 kernel values (dtype=float64).
FLOAT64_N = 100_000


def large_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One fit + predict of ``spec["impl"]`` in this process (data made first, not timed):
    times, test RMSE, CG iterations and the process's peak resident memory."""
    import resource

    from sklearn.datasets import make_friedman1

    n, n_test, m = spec["n"], spec["n_test"], spec["m"]
    alpha, gamma = spec["alpha"], spec["gamma"]
    x, y = make_friedman1(n_samples=n + n_test, n_features=LARGE_D, noise=1.0, random_state=0)
    x_train, y_train, x_test, y_test = x[:n], y[:n], x[n:], y[n:]
    if spec["impl"] == "fastamort":
        from fastamort import NystromKernelRidge

        model = NystromKernelRidge(
            alpha, gamma=gamma, n_components=m, random_state=0, dtype=spec.get("kernel_dtype")
        )
    elif spec["impl"] == "sklearn":
        from sklearn.kernel_approximation import Nystroem
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline

        model = make_pipeline(
            Nystroem(n_components=m, gamma=gamma, random_state=0),
            Ridge(alpha=alpha, fit_intercept=False),
        )
    else:
        from fastamort import KernelRidge

        model = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma)
    t0 = time.perf_counter()
    model.fit(x_train, y_train)
    t1 = time.perf_counter()
    pred = model.predict(x_test)
    t2 = time.perf_counter()
    peak_kib = _read_status_kib("VmHWM")  # this process's own high-water mark (Linux)
    if peak_kib is None:  # elsewhere; ru_maxrss also counts the parent's size at fork on Linux
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 if _BSD else 1024)
    return {
        "time_s": t2 - t0,
        "fit_s": t1 - t0,
        "predict_s": t2 - t1,
        "rmse": float(np.sqrt(np.mean((np.asarray(pred) - y_test) ** 2))),
        "n_iter": getattr(model, "n_iter_", None),
        "residual": getattr(model, "residual_", None),
        "peak_rss_mib": peak_kib / 1024,
    }


_CHILD = (
    "import json, sys\n"
    "from fastamort.benchmarks.regressor import large_child\n"
    "print(json.dumps(large_child(json.loads(sys.argv[1]))))"
)


def _in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['impl']} at n={spec['n']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_large(
    n: int,
    alpha: float,
    *,
    m: int = LARGE_M,
    gamma: float = LARGE_GAMMA,
    n_test: int = LARGE_N_TEST,
    with_sklearn: bool = True,
    with_exact: bool = False,
    with_float64: bool = False,
) -> dict[str, Any]:
    """One large-n row: NystromKernelRidge (default dtype: float32 kernel values), and
    optionally scikit-learn's pipeline, exact KernelRidge and NystromKernelRidge with float64
    kernel values, each fit + predict once in its own subprocess on the same data."""
    spec = {"n": n, "n_test": n_test, "m": m, "alpha": alpha, "gamma": gamma}
    ours = _in_subprocess({**spec, "impl": "fastamort"})
    row: dict[str, Any] = {
        "case": "nystrom",
        "n": n,
        "n_test": n_test,
        "d": LARGE_D,
        "m": m,
        "kernel": "rbf",
        "gamma": gamma,
        "alpha": alpha,
        "dtype": "float64",
        "kernel_dtype": "float32",
        "fastamort_s": ours["time_s"],
        "fit_s": ours["fit_s"],
        "predict_s": ours["predict_s"],
        "rmse": ours["rmse"],
        "iters": ours["n_iter"],
        "cg_residual": ours["residual"],
        "peak_rss_mib": ours["peak_rss_mib"],
        "sklearn_s": None,
        "sklearn_rmse": None,
        "sklearn_peak_rss_mib": None,
        "speedup_vs_sklearn": None,
        "rmse_rel_vs_sklearn": None,
        "exact_s": None,
        "exact_rmse": None,
        "rmse_rel_vs_exact": None,
        "float64_kernel_s": None,
        "float64_kernel_rmse": None,
        "float64_kernel_iters": None,
    }
    if with_sklearn:
        sk = _in_subprocess({**spec, "impl": "sklearn"})
        row.update(
            sklearn_s=sk["time_s"],
            sklearn_rmse=sk["rmse"],
            sklearn_peak_rss_mib=sk["peak_rss_mib"],
            speedup_vs_sklearn=sk["time_s"] / ours["time_s"],
            rmse_rel_vs_sklearn=(ours["rmse"] - sk["rmse"]) / sk["rmse"],
        )
    if with_float64:
        f64 = _in_subprocess({**spec, "impl": "fastamort", "kernel_dtype": "float64"})
        row.update(
            float64_kernel_s=f64["time_s"],
            float64_kernel_rmse=f64["rmse"],
            float64_kernel_iters=f64["n_iter"],
        )
    if with_exact:
        ex = _in_subprocess({**spec, "impl": "exact"})
        row.update(
            exact_s=ex["time_s"],
            exact_rmse=ex["rmse"],
            rmse_rel_vs_exact=(ours["rmse"] - ex["rmse"]) / ex["rmse"],
        )
    return row


def run_large(*, quick: bool = False) -> list[dict[str, Any]]:
    """The large-n rows (CPU): see the module docstring."""
    if quick:
        specs = [(3000, 1.0, 200, 1000)]
    else:
        specs = [(n, a, LARGE_M, LARGE_N_TEST) for n in LARGE_SIZES for a in LARGE_ALPHAS]
    rows = []
    for n, alpha, m, n_test in specs:
        rows.append(
            bench_large(
                n,
                alpha,
                m=m,
                n_test=n_test,
                with_sklearn=n <= SKLEARN_MAX_N,
                with_exact=n <= EXACT_MAX_N,
                with_float64=n == FLOAT64_N,
            )
        )
        print(f"  done nystrom n={n} alpha={alpha}", flush=True)
    return rows


LARGE_COLUMNS = [
    "n",
    "alpha",
    "fastamort_s",
    "iters",
    "rmse",
    "peak_rss_mib",
    "sklearn_s",
    "sklearn_rmse",
    "sklearn_peak_rss_mib",
    "speedup_vs_sklearn",
    "rmse_rel_vs_sklearn",
    "exact_s",
    "exact_rmse",
    "rmse_rel_vs_exact",
    "float64_kernel_s",
    "float64_kernel_rmse",
]


def run(*, quick: bool = False, device: str | None = None):
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = [500, 1000] if quick else [1000, 2000, 4000, 8000]
    if dev.type == "cuda" and not quick:
        sizes.append(32768)
    with_sklearn = _have_sklearn()
    if not with_sklearn:
        print("  scikit-learn is not installed: its columns stay empty (pip install scikit-learn)")
    load_before = _loadavg()
    rows: list[dict[str, Any]] = []
    for dtype in (torch.float64, torch.float32):
        for n in sizes:
            # n = 32768 on the host CPU takes minutes per dtype: scikit-learn in float64 only
            time_sklearn = with_sklearn and (n <= 8000 or dtype == torch.float64)
            rows.append(bench_one(n, dtype, dev, time_sklearn=time_sklearn))
            print(f"  done n={n} {dtype}", flush=True)
    if with_sklearn and dev.type == "cpu":  # the data set and the baseline come from sklearn
        large = run_large(quick=quick)
        print("\nLarge n: NystromKernelRidge vs Nystroem + Ridge (make_friedman1, rbf γ = 1)")
        print_table(large, LARGE_COLUMNS)
        rows += large
    env = environment(dev)
    env["sklearn"] = _sklearn_version()
    # the 1-minute load average around the run: > cpu count means others shared the CPUs
    env["loadavg_1min"] = [load_before, _loadavg()]
    return rows, env


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sklearn_version() -> str | None:
    try:
        import sklearn
    except ImportError:
        return None
    return sklearn.__version__


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("case", "exact") == "exact"]  # the large-n rows: a table
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(
        axes,
        ("speedup_vs_sklearn", "speedup_vs_torch"),
        ("fit + predict: speed-up over scikit-learn", "fit + predict: speed-up over torch"),
        strict=True,
    ):
        for dtype, marker in zip(sorted({r["dtype"] for r in rows}), "os", strict=False):
            sel = [r for r in rows if r["dtype"] == dtype and r[key] is not None]
            ax.plot([r["n"] for r in sel], [r[key] for r in sel], marker=marker, label=dtype)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (training points), d = 16, RBF")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "case",
    "dtype",
    "n",
    "n_test",
    "fastamort_s",
    "fit_s",
    "predict_s",
    "sklearn_s",
    "torch_s",
    "speedup_vs_sklearn",
    "speedup_vs_torch",
    "max_rel_diff",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("regressor", __doc__, run, plot, COLUMNS, argv)
