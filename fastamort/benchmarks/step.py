"""Benchmark of one full learner step (sleep, kernel step, model step).

Three implementations of the same step on the same model, data and sizes, in one run:

* ``fast``: :class:`fastamort.AmortisedLearner` with the automatic backends;
* ``torch``: the same learner with every engine op on the pure-PyTorch reference backend;
* ``authors``: a pure-PyTorch step written the way the authors' code does it: Gaussian Gram
  matrices from broadcast differences (chunked so that it fits in memory), the full M×N
  cross Gram, and an LU solve (``torch.linalg.solve``) shared by the targets.

The model is factor analysis with D-dimensional observations (k = min(D, 8) latents), wake
batch N = 100, held-out set M/10. Time is split into sampling, Gram ops (forward), solves
(forward), backward passes and the rest (model log densities, casts, optimiser), by timing
wrappers around the engine calls and ``torch.autograd.backward``.

Every row also reports the step's **floor**, measured in the same run with torch's own
routines: one float32 Cholesky factorisation of an M × M matrix plus one float32
(M × D) @ (D × M) GEMM. A step needs about two of each (a kernel step and a model step), so
``x_floor`` = step time / floor near 2 is the bound.

Run as ``fastamort bench step [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

import fastamort
from fastamort import estimator as estimator_module
from fastamort import kernel_learning as kernel_learning_module
from fastamort import kernels as kernels_module
from fastamort.models import FactorAnalysis
from fastamort.solvers import exact as exact_module

from ._harness import bench_main, environment, measure, sync

N_WAKE = 100


class SectionTimer:
    """Accumulates wall time per section; wraps the engine functions the learner calls."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    def wrap(self, fn, section: str):
        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.totals[section] += time.perf_counter() - t0
            return out

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[SectionTimer]:
        patches = [
            (kernels_module, "gram", "gram"),
            (kernels_module, "gram_matmul", "gram"),
            (exact_module, "exact_solve", "solve"),
            (kernel_learning_module, "exact_solve", "solve"),
            (estimator_module, "draw_sleep", "sleep"),
            (torch.autograd, "backward", "backward"),
        ]
        import fastamort.learner as learner_module

        patches.append((learner_module, "draw_sleep", "sleep"))
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
        try:
            for mod, name, section in patches:
                setattr(mod, name, self.wrap(getattr(mod, name), section))
            yield self
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)


def _problem(m: int, d: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    truth = FactorAnalysis(d, min(d, 8)).to(device)
    data = truth.sample(N_WAKE)[1]
    model = FactorAnalysis(d, min(d, 8)).to(device)
    return model, data


def _fast_step_fn(m: int, d: int, device, backend: str):
    model, data = _problem(m, d, device)
    kernel = fastamort.kernels.Gaussian(backend=backend)
    learner = fastamort.AmortisedLearner(
        model, kernel=kernel, n_sleep=m, n_held_out=m // 10, lam=1e-2
    )
    learner.initialise()
    return lambda: learner.step(data)


def _authors_gram(a: torch.Tensor, b: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """exp(−‖a−b‖²/2σ²) by broadcast differences, in row chunks of ≤ 2^26 elements."""
    rows = max(1, (1 << 26) // max(1, b.shape[0] * a.shape[1]))
    parts = []
    for i in range(0, a.shape[0], rows):
        d2 = ((a[i : i + rows, None, :] - b[None, :, :]) ** 2).sum(-1)
        parts.append(torch.exp(-d2 / (2 * sigma**2)))
    return torch.cat(parts)


def _authors_step_fn(m: int, d: int, device):
    model, data = _problem(m, d, device)
    with torch.no_grad():
        xs0 = model.sample(m)[1]
    log_sigma = torch.tensor(
        math.log(kernels_module.median_distance(xs0)), device=device, requires_grad=True
    )
    log_lam = torch.tensor(math.log(1e-2), device=device, requires_grad=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    kopt = torch.optim.Adam([log_sigma, log_lam], lr=1e-2)

    def krr(xs, xq, *targets):
        sigma = log_sigma.exp()
        k = _authors_gram(xs, xs, sigma) + log_lam.exp() * torch.eye(m, device=device)
        g = _authors_gram(xs, xq, sigma)
        gkinv = torch.linalg.solve(k, g).T  # LU solve, shared by the targets
        return [gkinv @ t for t in targets]

    def step():
        with torch.no_grad():
            z, xs = model.sample(m)
            zv, xv = model.sample(m // 10)
            nat, norm = model.natural_params(z), model.log_normaliser(z) - model.log_prior(z)
            natv = model.natural_params(zv)
            normv = model.log_normaliser(zv) - model.log_prior(zv)
        enat, enorm = krr(xs, xv, nat, norm)
        sv = model.sufficient_stats(xv)
        pred = (enat * sv).sum(-1) - enorm
        loss = ((pred - ((natv * sv).sum(-1) - normv)) ** 2).mean()
        kopt.zero_grad()
        loss.backward()
        kopt.step()
        with torch.no_grad():
            z, xs = model.sample(m)
        nat, norm = model.natural_params(z), model.log_normaliser(z) - model.log_prior(z)
        enat, enorm = krr(xs, data, nat, norm)
        elogp = ((enat * model.sufficient_stats(data)).sum(-1) - enorm).mean()
        opt.zero_grad()
        (-elogp).backward()
        opt.step()

    return step


def _time(step, device, repeats: int) -> tuple[float, dict[str, float]]:
    step()  # warm-up (and JIT/autotune on GPU)
    timer = SectionTimer(device)
    times = []
    with timer.installed():
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
    total = sorted(times)[len(times) // 2]
    parts = {k: v / repeats for k, v in timer.totals.items()}
    return total, parts


def floor_time(m: int, d: int, device: torch.device) -> dict[str, float]:
    """The step's floor: one float32 Cholesky of an M × M SPD matrix plus one float32
    (M × D) @ (D × M) GEMM, each timed with torch's own routines (median of repeats)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, m, generator=g).to(device) / math.sqrt(m)
    spd = a @ a.mT + torch.eye(m, device=device)
    x = torch.randn(m, d, generator=g).to(device)
    y = torch.randn(d, m, generator=g).to(device)
    chol = measure(lambda: torch.linalg.cholesky(spd), device)["median_s"]
    gemm = measure(lambda: torch.mm(x, y), device)["median_s"]
    return {"floor_s": chol + gemm, "floor_cholesky_s": chol, "floor_gemm_s": gemm}


def bench_one(m: int, d: int, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    fast_backend = "auto"
    rows = []
    results = {}
    floor = floor_time(m, d, device)
    for impl in ("fast", "torch", "authors"):
        if impl == "authors":
            step = _authors_step_fn(m, d, device)
        else:
            step = _fast_step_fn(m, d, device, fast_backend if impl == "fast" else "torch")
        total, parts = _time(step, device, repeats)
        results[impl] = total
        rest = total - sum(parts.values())
        rows.append(
            {
                "M": m,
                "N": N_WAKE,
                "D": d,
                "impl": impl,
                "time_s": total,
                "sleep_s": parts.get("sleep"),
                "gram_s": parts.get("gram"),
                "solve_s": parts.get("solve"),
                "backward_s": parts.get("backward"),
                "rest_s": rest,
                **floor,
                "x_floor": total / floor["floor_s"],
            }
        )
    for r in rows:
        r["speedup_vs_torch"] = results["torch"] / r["time_s"]
        r["speedup_vs_authors"] = results["authors"] / r["time_s"]
    return rows


def run(*, quick: bool = False, device: str | None = None):
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = (1000, 2000) if quick else (1000, 2000, 5000)
    dims = (2, 64) if quick else (2, 64, 784)
    rows: list[dict[str, Any]] = []
    for d in dims:
        for m in sizes:
            repeats = 5 if m <= 2000 else 2  # the median of 5 where a step is cheap
            rows += bench_one(m, d, dev, repeats)
            print(f"  done M={m} D={d}", flush=True)
    return rows, environment(dev)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fast = [r for r in rows if r["impl"] == "fast"]
    labels = [f"M{r['M']}\nD{r['D']}" for r in fast]
    fig, ax = plt.subplots(figsize=(max(6, len(fast)), 4))
    ax.bar(
        [i - 0.2 for i in range(len(fast))],
        [r["speedup_vs_torch"] for r in fast],
        0.4,
        label="vs torch-reference step",
    )
    ax.bar(
        [i + 0.2 for i in range(len(fast))],
        [r["speedup_vs_authors"] for r in fast],
        0.4,
        label="vs authors-style step",
    )
    ax.set_xticks(range(len(fast)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speed-up of one learner step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "M",
    "D",
    "impl",
    "time_s",
    "sleep_s",
    "gram_s",
    "solve_s",
    "backward_s",
    "rest_s",
    "floor_s",
    "x_floor",
    "speedup_vs_torch",
    "speedup_vs_authors",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("step", __doc__, run, plot, COLUMNS, argv)
