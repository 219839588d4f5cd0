"""Accuracy/cost study of the estimator's solvers: exact KRR, Nyström, random features, CG.

For factor analysis (D = 5 observed, k = 2 latent dimensions; exact log-likelihood gradient
known), one wake batch of N = 100 and a model at its random initialisation, each solver
estimates the mean ML gradient from M sleep samples; a row reports the cosine similarity and
relative error to the exact gradient (mean over seeds), the time of one estimator step (sleep
draw, weights, objective, backward; median over seeds) and the process's peak resident memory
during the step (VmHWM, reset before each step through /proc/self/clear_refs).

Settings: Gaussian kernel, lengthscale by the median heuristic, λ = λ₀·√(M/2000) with λ₀ the
leave-one-out choice at M = 2000 (the same λ for every solver at a given M; a fixed λ
over-fits as M grows, λ ∝ M over-smooths); Nyström with 1000 uniform inducing points, 2000
random Fourier features, CG with the default tolerance and a rank-1000 Nyström
preconditioner. Exact KRR runs only up to :data:`EXACT_MAX` (its M×M Gram matrix and factor).
Extra rows time one full :class:`fastamort.AmortisedLearner` step (kernel step on held-out
sleep samples + model step) at the largest M.

Targets (CPU, 2 cores): M = 100,000 in < 60 s per step and < 4 GiB peak memory; at equal
time per step, the best scalable solver more accurate than exact KRR at the largest M that
exact KRR fits in that time. The summary rows (``solver == "summary"``) state both.

Run as ``fastamort bench scale [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.functional import cosine_similarity

import fastamort
from fastamort.estimator import choose_lambda, regression_targets
from fastamort.kernels import Gaussian
from fastamort.models import FactorAnalysis

from ._harness import _read_status_kib, bench_main, environment

OBS_DIM, LATENT_DIM, N_WAKE = 5, 2, 100
SIZES = (2000, 10000, 50000, 100000)
QUICK_SIZES = (2000, 5000)
EXACT_SIZES = (2000, 5000, 10000)
EXACT_MAX = 10000
SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "exact": {},
    "nystrom": {"n_inducing": 1000},
    "rff": {"n_features": 2000},
    "cg": {"n_inducing": 1000},
}
TIME_TARGET_S = 60.0
MEMORY_TARGET_GIB = 4.0
GIB = 1024**3


def _reset_peak() -> None:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_gib() -> float | None:
    kib = _read_status_kib("VmHWM")
    return None if kib is None else kib * 1024 / GIB


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def problem(seed: int = 0):
    """Model at its initialisation, wake batch, exact gradient, kernel and λ₀."""
    torch.manual_seed(seed)
    truth = FactorAnalysis(OBS_DIM, LATENT_DIM).double()
    x = truth.sample(N_WAKE)[1]
    model = FactorAnalysis(OBS_DIM, LATENT_DIM).double()
    model.zero_grad()
    model.exact_log_likelihood(x).backward()
    exact = _grad(model)
    z, xs = model.sample(2000)
    kernel = Gaussian().init_from(xs)
    with torch.no_grad():
        targets, stats = regression_targets(model, z, xs, "expfam")
        lam0 = choose_lambda(xs, kernel, targets, stats)
    return model, x, exact, kernel, lam0


def lam_for(lam0: float, m: int) -> float:
    return lam0 * math.sqrt(m / 2000)


def one_step(model, x, exact, kernel, lam, solver, m, seed) -> dict[str, Any]:
    torch.manual_seed(1000 + seed)
    model.zero_grad()
    _reset_peak()
    t0 = time.perf_counter()
    est = fastamort.amortised_estimate(
        model, x, n_sleep=m, kernel=kernel, lam=lam, solver=solver, **SOLVER_OPTIONS[solver]
    )
    est.objective.backward()
    seconds = time.perf_counter() - t0
    peak = _peak_gib()
    g = _grad(model)
    iterations = est.info.get("iterations")
    del est
    return {
        "iterations": iterations,
        "time_s": seconds,
        "cosine": float(cosine_similarity(g, exact, dim=0)),
        "rel_err": float((g - exact).norm() / exact.norm()),
        "peak_rss_gib": peak,
    }


def bench_solver(model, x, exact, kernel, lam0, solver, m, seeds) -> dict[str, Any]:
    runs = [one_step(model, x, exact, kernel, lam_for(lam0, m), solver, m, s) for s in seeds]
    row = {
        "solver": solver,
        "M": m,
        "N": N_WAKE,
        "D": OBS_DIM,
        "lam": lam_for(lam0, m),
        "seeds": len(runs),
        "time_s": statistics.median(r["time_s"] for r in runs),
        "cosine": statistics.fmean(r["cosine"] for r in runs),
        "cosine_min": min(r["cosine"] for r in runs),
        "rel_err": statistics.fmean(r["rel_err"] for r in runs),
        "peak_rss_gib": max((r["peak_rss_gib"] or 0.0) for r in runs) or None,
        **{k: v for k, v in SOLVER_OPTIONS[solver].items()},
    }
    if solver == "cg":
        row["cg_iterations"] = statistics.fmean(r["iterations"] for r in runs)
    return row


def bench_learner_step(solver: str, m: int, lam0: float) -> dict[str, Any]:
    torch.manual_seed(0)
    data = FactorAnalysis(OBS_DIM, LATENT_DIM).double().sample(N_WAKE)[1]
    model = FactorAnalysis(OBS_DIM, LATENT_DIM).double()
    learner = fastamort.AmortisedLearner(
        model,
        n_sleep=m,
        n_held_out=1000,
        lam=lam_for(lam0, m),
        solver=solver,
        **SOLVER_OPTIONS[solver],
    )
    learner.initialise()
    _reset_peak()
    t0 = time.perf_counter()
    record = learner.step(data)
    seconds = time.perf_counter() - t0
    return {
        "solver": f"learner-step/{solver}",
        "M": m,
        "N": N_WAKE,
        "D": OBS_DIM,
        "lam": lam_for(lam0, m),
        "seeds": 1,
        "time_s": seconds,
        "peak_rss_gib": _peak_gib(),
        "kernel_loss": record.get("kernel_loss"),
        **SOLVER_OPTIONS[solver],
    }


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The two target rows: time/memory at the largest M, and the equal-time comparison."""
    study = [r for r in rows if r["solver"] in SOLVER_OPTIONS]
    m_max = max(r["M"] for r in study)
    scalable = [r for r in study if r["solver"] != "exact" and r["M"] == m_max]
    within = [r for r in scalable if r["time_s"] < TIME_TARGET_S] or scalable
    best = max(within, key=lambda r: r["cosine"])
    peak = best["peak_rss_gib"]
    out = [
        {
            "solver": "summary",
            "target": "time+memory",
            "M": m_max,
            "best_solver": best["solver"],
            "time_s": best["time_s"],
            "peak_rss_gib": peak,
            "cosine": best["cosine"],
            "met": best["time_s"] < TIME_TARGET_S and peak is not None and peak < MEMORY_TARGET_GIB,
        }
    ]
    exact_rows = [r for r in study if r["solver"] == "exact"]
    fits = [r for r in exact_rows if r["time_s"] <= best["time_s"]]
    if fits:
        ref = max(fits, key=lambda r: r["M"])
        out.append(
            {
                "solver": "summary",
                "target": "equal-time accuracy",
                "M": best["M"],
                "best_solver": best["solver"],
                "time_s": best["time_s"],
                "cosine": best["cosine"],
                "exact_M": ref["M"],
                "exact_time_s": ref["time_s"],
                "exact_cosine": ref["cosine"],
                "met": best["cosine"] > ref["cosine"],
            }
        )
    return out


def run(*, quick: bool = False, device: str | None = None):
    dev = torch.device(device or "cpu")
    if dev.type != "cpu":
        raise ValueError("bench scale: runs on the CPU (the targets are CPU targets)")
    sizes = QUICK_SIZES if quick else SIZES
    exact_sizes = tuple(m for m in (QUICK_SIZES if quick else EXACT_SIZES) if m <= EXACT_MAX)
    model, x, exact, kernel, lam0 = problem()
    rows: list[dict[str, Any]] = []
    plan = [("exact", m) for m in exact_sizes]
    plan += [(s, m) for m in sizes for s in ("nystrom", "rff", "cg")]
    for solver, m in plan:
        seeds = range(
            2 if quick else (3 if m <= 50000 and not (solver == "cg" and m > 10000) else 1)
        )
        rows.append(bench_solver(model, x, exact, kernel, lam0, solver, m, list(seeds)))
        r = rows[-1]
        print(
            f"  {solver:8s} M={m:>6d}  {r['time_s']:7.2f} s  cos {r['cosine']:.5f}  "
            f"peak {r['peak_rss_gib'] or float('nan'):.2f} GiB",
            flush=True,
        )
    for solver in ("nystrom", "rff"):
        rows.append(bench_learner_step(solver, sizes[-1], lam0))
        r = rows[-1]
        print(f"  {r['solver']} M={r['M']}  {r['time_s']:.2f} s  peak {r['peak_rss_gib']:.2f} GiB")
    rows += summarise(rows)
    return rows, environment(dev)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver, marker in (("exact", "s"), ("nystrom", "o"), ("rff", "^"), ("cg", "D")):
        pts = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["M"])
        if not pts:
            continue
        ax.plot(
            [r["time_s"] for r in pts],
            [max(1e-7, 1 - r["cosine"]) for r in pts],
            marker=marker,
            label=solver,
        )
        for r in pts:
            ax.annotate(
                f"{r['M'] // 1000}k",
                (r["time_s"], max(1e-7, 1 - r["cosine"])),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axvline(TIME_TARGET_S, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per estimator step (s)")
    ax.set_ylabel("1 − cosine similarity to the exact gradient")
    ax.set_title("factor analysis D=5, k=2, N=100: accuracy against time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "solver",
    "M",
    "lam",
    "seeds",
    "time_s",
    "cosine",
    "cosine_min",
    "rel_err",
    "peak_rss_gib",
    "cg_iterations",
    "target",
    "best_solver",
    "exact_M",
    "exact_cosine",
    "met",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("scale", __doc__, run, plot, COLUMNS, argv)
