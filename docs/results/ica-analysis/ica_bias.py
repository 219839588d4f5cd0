"""Why amortised ICA overestimates σ and stops short of FastICA (docs/RESULTS.md, ica section).

Everything is measured on the ica experiment's synthetic problems (D = K = 4, Laplace sources,
noise σ* = 0.1, the experiment's seeds) with its kernel setting: Gaussian kernel on raw x,
median-heuristic lengthscale on the sleep set, λ = 1e-2, M = 1000 sleep samples.

1. **σ at the true A.** The σ-gradient of the expfam estimate vanishes where the regression's
   estimate of E‖x − As‖² over the wake data equals Dσ² (its exact value at σ = σ*). The
   table gives that ratio (mean ± standard error over 8 sleep sets, 2000 wake points) for the
   plain KRR and for the KRR with an unpenalised quadratic trend in x (semi-parametric KRR:
   the weights reproduce every quadratic of x exactly), and the plain estimate split into
   Σ_m a_nm‖x_n − x_m‖² (the kernel's smoothing), 2Σ_m a_nm(x_n − x_m)·ε_m and Σ_m a_nm‖ε_m‖².
2. **The A-gradient at σ = σ*.** Its error, relative to the norm of a reference gradient by
   importance sampling (proposal N(A⁻¹x, σ²(AᵀA)⁻¹), the likelihood's own shape, 2000
   particles per point), per sleep set and for the mean of 8 sets, at A* and at a rotated A.
3. With ``--train``: the learner started at (A*, σ*) and run 2000 steps at lr 3e-3, with the
   plain regression and with ``trend=2`` (problems 0 and 1); then from the experiment's
   random start (σ = 1) 2250 plain steps at lr 3e-2 followed by 2000 steps at lr 3e-3 with
   ``trend=2`` (problems 0–2); all by the experiment's refinement loop
   (:func:`fastamort.experiments.ica.refine`: the median heuristic reset every 10 steps).

4. With ``--rotation``: the part of the A-gradient that rotates A, the off-diagonal of the
   relative gradient Aᵀg (the diagonal only rescales columns, which the Amari distance
   ignores): mean ± standard error over 1200 sleep sets with all 5000 points as the wake
   batch, against the importance-sampling reference, at A* and at the rotated A of part 2,
   for the plain KRR and the quadratic trend at 1× and 2× the median-heuristic lengthscale.
   The mean is what training follows: a bias larger than the reference's change between A*
   and the rotated A moves the fixed point of training away from A*.
5. With ``--exact-ml``: the maximum-likelihood estimate itself, by Monte Carlo: log p(x) =
   −log|det A| + log E_ε[Π_i Laplace((A⁻¹(x + σε))_i)], ε ~ N(0, I) (exact for square A),
   400 fixed draws per point, A maximised by L-BFGS from A* at each σ of a grid; per σ,
   2Δ(−log-likelihood) to the best σ of the grid (under 3.84: inside a 95 % interval) and the
   Amari distance of the best A to A*.

Run (about 1 minute; ``--train`` about 15 more, ``--rotation`` about 10, ``--exact-ml``
about 5, on one thread)::

    python docs/results/ica-analysis/ica_bias.py --train --rotation --exact-ml \
        > docs/results/ica-analysis/output.txt
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import torch

from fastamort.experiments import _common
from fastamort.experiments.ica import FULL, amari_distance, refine, synthetic_problem
from fastamort.kernels import Gaussian
from fastamort.models.ica import LaplaceICA
from fastamort.polynomial_trend import trend_weights
from fastamort.solvers.exact import exact_weights

LAM, M, N_WAKE, SETS, ROTATION_SETS = 1e-2, 1000, 2000, 8, 1200


def problem(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A* (4, 4), x (5000, 4)) of the experiment's synthetic problem i (seed 0)."""
    return synthetic_problem(FULL, 0, i, torch.device("cpu"))


def model_at(a: torch.Tensor, sigma: float) -> LaplaceICA:
    model = LaplaceICA(4, 4).double()
    with torch.no_grad():
        model.weight.copy_(a)
        model.likelihood.log_std.fill_(math.log(sigma))
    return model


def regression_weights(
    xs: torch.Tensor, xw: torch.Tensor, v: torch.Tensor, trend: int, scale: float = 1.0
) -> torch.Tensor:
    """W (M, P) of the estimator's own regression against the wake weights v (N, P): Gaussian
    kernel at ``scale`` × the median heuristic of the sleep set, λ = LAM, plain (``trend`` 0)
    or with a polynomial trend of that degree."""
    kernel = Gaussian().init_from(xs)
    with torch.no_grad():
        kernel.log_lengthscale.add_(math.log(scale))
    if trend:
        return trend_weights(kernel, xs, xw, v, LAM, trend)[0]
    return exact_weights(kernel, xs, xw, v, LAM)[0]


def wake_weights(xs: torch.Tensor, xw: torch.Tensor, trend: bool) -> torch.Tensor:
    """KRR weights a (N, M), the prediction at wake point n being Σ_m a_nm t_m: the
    regression at the median heuristic, plain or with ``trend=2``."""
    return regression_weights(xs, xw, torch.eye(len(xw), dtype=xw.dtype), 2 if trend else 0).T


def sleep_set(a: torch.Tensor, sigma: float, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():
        z, xs = model_at(a, sigma).sample(M)
    return z, xs, xs - z @ a.T


def sigma_table(a: torch.Tensor, xw: torch.Tensor) -> None:
    print(
        "| σ | plain: Ê‖x − As‖² / Dσ² | quadratic trend | smoothing term / Dσ² | cross / Dσ² |"
        " ‖ε‖² term / Dσ² |"
    )
    print("|---|---|---|---|---|---|")
    for sigma in (0.1, 0.15, 0.2, 0.3):
        rows = {"plain": [], "trend": [], "smooth": [], "cross": [], "noise": []}
        for seed in range(SETS):
            z, xs, eps = sleep_set(a, sigma, seed)
            for trend in (False, True):
                w = wake_weights(xs, xw, trend)
                rows["trend" if trend else "plain"].append(
                    float((w * torch.cdist(xw, z @ a.T) ** 2).sum(1).mean())
                )
            w = wake_weights(xs, xw, False)
            diff = xw[:, None, :] - xs[None]
            rows["smooth"].append(float((w * (diff**2).sum(-1)).sum(1).mean()))
            rows["cross"].append(float((w * 2 * (diff * eps[None]).sum(-1)).sum(1).mean()))
            rows["noise"].append(float((w * (eps**2).sum(1)[None]).sum(1).mean()))
        cells = [torch.tensor(v) / (4 * sigma**2) for v in rows.values()]
        text = [f"{float(v.mean()):.2f} ± {float(v.std()) / math.sqrt(SETS):.2f}" for v in cells]
        print(f"| {sigma} | " + " | ".join(text) + " |")


def reference_a_gradient(a: torch.Tensor, sigma: float, xw: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_n E_post[(x_n − A s) sᵀ]/σ² by self-normalised importance sampling."""
    torch.manual_seed(5)
    chol = sigma * torch.linalg.cholesky(torch.linalg.inv(a.T @ a))
    centre = torch.linalg.solve(a, xw.T).T
    total = torch.zeros_like(a)
    for i in range(0, len(xw), 100):
        s = (
            centre[i : i + 100, None, :]
            + torch.randn(len(centre[i : i + 100]), 2000, 4, dtype=a.dtype) @ chol.T
        )
        w = torch.softmax(-s.abs().sum(-1), 1)  # prior / proposal ∝ the Laplace prior
        es = (w[..., None] * s).sum(1)
        ess = torch.einsum("bl,bli,blj->ij", w, s, s)
        total += xw[i : i + 100].T @ es - a @ ess
    return total / len(xw) / sigma**2


def a_gradient_table(a_star: torch.Tensor, xw: torch.Tensor) -> None:
    sigma = FULL.syn_noise
    torch.manual_seed(99)
    skew = torch.randn(4, 4, dtype=torch.float64)
    rotated = a_star @ torch.linalg.matrix_exp(0.1 * (skew - skew.T))
    print(
        "| A | Amari to A* | ‖g_ref‖ | kernel | error per sleep set / ‖g_ref‖ |"
        " error of the mean of 8 / ‖g_ref‖ |"
    )
    print("|---|---|---|---|---|---|")
    for name, a in (("A*", a_star), ("rotated", rotated)):
        g_ref = reference_a_gradient(a, sigma, xw)
        for trend in (False, True):
            gs = []
            for seed in range(SETS):
                z, xs, _ = sleep_set(a, sigma, seed)
                w = wake_weights(xs, xw, trend)
                ssT = torch.einsum("nm,mi,mj->ij", w, z, z) / len(xw)
                gs.append(((xw.T @ (w @ z)) / len(xw) - a @ ssT) / sigma**2)
            gs = torch.stack(gs)
            ref = float(g_ref.norm())
            per = float((gs - g_ref).flatten(1).norm(dim=1).mean()) / ref
            mean = float((gs.mean(0) - g_ref).norm()) / ref
            print(
                f"| {name} | {amari_distance(a, a_star):.3f} | {ref:.3f} | "
                f"{'quadratic trend' if trend else 'plain'} | {per:.1f} | {mean:.1f} |"
            )


def fit(model: LaplaceICA, x: torch.Tensor, steps: int, lr: float, trend: int | None, seed: int):
    """``steps`` learner steps at ``lr`` by the experiment's refinement (batch 100, the median
    heuristic reset every 10 steps), with the regression's polynomial trend or without."""
    cfg = replace(FULL, syn_refine_steps=steps, syn_refine_lr=lr, syn_refine_trend=trend)
    refine(model, x, cfg=cfg, seed=seed, progress=False)


def training_table() -> None:
    torch.set_num_threads(1)
    print("| problem | start | phase 2 kernel | Amari | σ |")
    print("|---|---|---|---|---|")
    for i in (0, 1):
        a_star, x = problem(i)
        for trend in (None, 2):
            model = model_at(a_star, FULL.syn_noise)
            torch.manual_seed(_common.sub_seed(0, "synthetic", i, "train"))
            fit(model, x, 2000, 3e-3, trend, seed=1)
            print(
                f"| {i} | truth | {'quadratic trend' if trend else 'plain'} | "
                f"{amari_distance(model.mixing, a_star):.3f} | {model.noise_std:.3f} |",
                flush=True,
            )
    for i in (0, 1, 2):
        a_star, x = problem(i)
        torch.manual_seed(_common.sub_seed(0, "synthetic", i, "init"))
        model = LaplaceICA(4, 4).double()
        torch.manual_seed(_common.sub_seed(0, "synthetic", i, "train"))
        fit(model, x, 2250, FULL.syn_lr, None, seed=1)
        before = (amari_distance(model.mixing, a_star), model.noise_std)
        fit(model, x, 2000, 3e-3, 2, seed=2)
        print(
            f"| {i} | random, then 2250 plain steps (Amari {before[0]:.3f}, σ {before[1]:.3f})"
            f" | quadratic trend | {amari_distance(model.mixing, a_star):.3f} | "
            f"{model.noise_std:.3f} |",
            flush=True,
        )


def rotation_gradients(a: torch.Tensor, x: torch.Tensor, trend: int, scale: float) -> torch.Tensor:
    """The off-diagonal of Aᵀg, (ROTATION_SETS, 12), one row per sleep set: the estimator's
    regression (λ = LAM, ℓ = ``scale`` × median heuristic, plain or ``trend=2``) with the
    wake mean over all of ``x`` folded into its right-hand side."""
    off = ~torch.eye(4, dtype=torch.bool)
    v = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) / len(x)
    rows = []
    for seed in range(ROTATION_SETS):
        z, xs, _ = sleep_set(a, FULL.syn_noise, 5000 + seed)
        w = regression_weights(xs, x, v, trend, scale)
        g = (w[:, :4].T @ z - a @ (z.T * w[:, 4]) @ z) / FULL.syn_noise**2
        rows.append((a.T @ g)[off])
    return torch.stack(rows)


def rotation_table(a_star: torch.Tensor, x: torch.Tensor) -> None:
    torch.manual_seed(99)
    skew = torch.randn(4, 4, dtype=torch.float64)
    rotated = a_star @ torch.linalg.matrix_exp(0.1 * (skew - skew.T))
    off = ~torch.eye(4, dtype=torch.bool)
    print(
        "| A | ‖r_ref‖ | kernel | ‖mean r‖ ± s.e. | ‖mean r − r_ref‖ | cos(mean r, r_ref) |"
        " noise per sleep set |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, a in (("A*", a_star), ("rotated (Amari 0.075)", rotated)):
        r_ref = (a.T @ reference_a_gradient(a, FULL.syn_noise, x))[off]
        for trend, scale in ((0, 1.0), (2, 1.0), (2, 2.0)):
            rs = rotation_gradients(a, x, trend, scale)
            mean = rs.mean(0)
            se = float(rs.std(0).norm()) / math.sqrt(len(rs))
            kind = f"{'quadratic trend' if trend else 'plain'}, ℓ = {scale:g} × median"
            print(
                f"| {name} | {float(r_ref.norm()):.3f} | {kind} | {float(mean.norm()):.3f} ± "
                f"{se:.3f} | {float((mean - r_ref).norm()):.3f} | "
                f"{float(mean @ r_ref / mean.norm() / r_ref.norm()):.2f} | "
                f"{float(rs.std(0).norm()):.2f} |",
                flush=True,
            )


def neg_log_lik(a: torch.Tensor, sigma: float, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """−Σ_n log p(x_n) of the square Laplace ICA, by Monte Carlo over the noise draws ``eps``
    (K, N, D): p(x) = E_ε[p_s(A⁻¹(x + σε))] / |det A|."""
    s = (x[None] + sigma * eps) @ torch.linalg.inv(a).T
    log_prior = -s.abs().sum(-1) - a.shape[1] * math.log(2)
    log_mean = torch.logsumexp(log_prior, 0) - math.log(len(eps))
    return len(x) * torch.linalg.slogdet(a)[1] - log_mean.sum()


def exact_ml_table() -> None:
    draws = 400
    sigmas = (1e-3, 0.05, 0.1, 0.15, 0.2, 0.3)
    print("| problem | " + " | ".join(f"σ = {s:g}: 2Δ, Amari" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for i in range(3):
        a_star, x = problem(i)
        eps = torch.randn(draws, *x.shape, generator=torch.Generator().manual_seed(1),
                          dtype=x.dtype)  # fmt: skip

        cells = []
        for sigma in sigmas:
            a = a_star.clone().requires_grad_(True)
            opt = torch.optim.LBFGS([a], max_iter=100, line_search_fn="strong_wolfe")

            def closure(a=a, sigma=sigma, opt=opt, x=x, eps=eps) -> torch.Tensor:
                opt.zero_grad()
                loss = neg_log_lik(a, sigma, x, eps)
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                nll = float(neg_log_lik(a, sigma, x, eps))
            cells.append((nll, amari_distance(a.detach(), a_star)))
        best = min(c[0] for c in cells)
        text = [f"{2 * (nll - best):.1f}, {am:.4f}" for nll, am in cells]
        print(f"| {i} | " + " | ".join(text) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="also the training runs (part 3)")
    parser.add_argument("--rotation", action="store_true", help="also part 4")
    parser.add_argument("--exact-ml", action="store_true", help="also part 5")
    args = parser.parse_args()
    torch.set_num_threads(2)
    a_star, x = problem(0)
    xw = x[:N_WAKE]
    print("## 1. σ at the true A (problem 0)\n")
    sigma_table(a_star, xw)
    print("\n## 2. The A-gradient at σ = 0.1 (problem 0)\n")
    a_gradient_table(a_star, xw)
    if args.train:
        print("\n## 3. Training\n")
        training_table()
    if args.rotation:
        print("\n## 4. The rotating part of the A-gradient (problem 0, all 5000 points)\n")
        rotation_table(a_star, x)
    if args.exact_ml:
        print("\n## 5. Exact maximum likelihood (Monte Carlo), σ profile\n")
        exact_ml_table()


if __name__ == "__main__":
    main()
