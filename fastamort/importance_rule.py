"""The ``"importance"`` rule: the (ℓ, λ) whose KRR gradient is closest to an importance-sampling
gradient at the wake batch.

Leave-one-out error and the Gaussian-process evidence score the regression at the *sleep*
points; the gradient needs it at the *wake* points, which lie off the sleep distribution
while the model is wrong (issue 22). For an exponential-family model the sleep latents z_m,
drawn from the prior, are also a prior-proposal importance sample for every wake point:
the self-normalised weights b_nm ∝ p(x_n | z_m) = exp(η(z_m)·S(x_n) − Ψ(z_m)) (h(x_n) cancels)
cost one N × M product of quantities the estimator already has. They give a reference gradient
g_IS = ∇θ (1/N) Σ_n Σ_m b_nm log p(z_m, x_n), the same linear form in the targets as the KRR
estimate with weights W_IS = [Σ_n b_nm, Σ_n b_nm S(x_n)] / N. The rule takes, over λ in
:data:`~fastamort.hyperparameters.LAMBDA_GRID` and (when the kernel's lengthscale was not
given) ℓ in :data:`~fastamort.hyperparameters.LENGTHSCALE_FACTORS` × the median heuristic,
the KRR estimate whose θ-gradient is closest to g_IS, on the estimate's own sleep set.

It chooses two numbers, so the reference may be noisy: measured (docs/RESULTS.md,
gradient-estimation) the choice is within the exact-gradient grid oracle on factor analysis
and the Gaussian mixture, and 1.36× the oracle with a median effective sample size of 1
(factor analysis, D = 20, k = 10), where g_IS itself is 1.6× as far from the exact gradient as
the chosen KRR estimate. The choice is made on the estimate's own sleep set: carried to a
fresh sleep set, the mixture's error rose to 1.3–3.8× the oracle's.

Cost: one Cholesky factorisation and one backward pass through the targets per candidate,
λ scanned upwards per ℓ until the criterion has risen twice; on at most
:data:`IMPORTANCE_MAX_POINTS` sleep points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .hyperparameters import LAMBDA_GRID, LENGTHSCALE_FACTORS
from .kernels import Kernel
from .ops import gram

#: At most this many sleep points enter the ``"importance"`` rule (one Cholesky factorisation
#: of that size per candidate); larger sleep sets choose on a fixed random subset.
IMPORTANCE_MAX_POINTS = 4000
#: λ is scanned upwards per lengthscale until the criterion has exceeded that lengthscale's
#: best this many times in a row.
IMPORTANCE_PATIENCE = 2


class ImportanceFailed(ValueError):
    """No candidate could be scored (a non-finite reference or candidate gradients)."""


@torch.no_grad()
def importance_weights(
    eta: torch.Tensor, log_normaliser: torch.Tensor, wake_stats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised prior-proposal importance weights, as estimator weights.

    Args:
        eta: natural parameters η(z_m) of the sleep latents, (M, P).
        log_normaliser: Ψ(z_m), (M,).
        wake_stats: sufficient statistics S(x_n) of the wake batch, (N, P).

    Returns:
        ``(W, ess)``: W (M, 1 + P) = [Σ_n b_nm, Σ_n b_nm S(x_n)] / N with b_nm ∝
        exp(η_m·S_n − Ψ_m) normalised over m, in float64, and the Kish effective sample size
        1 / Σ_m b_nm² of each wake point (N,).
    """
    s = wake_stats.to(torch.float64).reshape(wake_stats.shape[0], -1)
    log_w = s @ eta.to(torch.float64).reshape(eta.shape[0], -1).mT
    b = torch.softmax(log_w - log_normaliser.to(torch.float64).reshape(1, -1), dim=1)
    n = s.shape[0]
    weights = torch.cat([b.sum(0)[:, None], b.mT @ s], dim=1) / n
    return weights, 1.0 / b.square().sum(1)


def choose_by_importance(
    features: torch.Tensor,
    wake_features: torch.Tensor,
    wake_weights: torch.Tensor,
    kernel: Kernel,
    gradient_of: Callable[[torch.Tensor], torch.Tensor],
    reference: torch.Tensor,
    *,
    lengthscale: bool = True,
    lams: Sequence[float] = LAMBDA_GRID,
    factors: Sequence[float] = LENGTHSCALE_FACTORS,
) -> tuple[float, float | None, dict[str, float]]:
    """The (λ, ℓ) whose estimate's θ-gradient is closest to ``reference``.

    Args:
        features: featurised sleep points, (M, D), float64.
        wake_features: featurised wake points, (N, D), float64.
        wake_weights: the estimator's wake vectors V, (N, C) (``[1, S_w]/N`` or ``1/N``).
        kernel: the kernel (its name, backend and current lengthscale, the grid's centre).
        gradient_of: KRR weights (M, C) -> the estimate's flat θ-gradient.
        reference: the importance-sampling gradient, flat.
        lengthscale: whether ℓ is chosen too (else the kernel's own is kept).
        lams, factors: the λ grid and the lengthscale multiples.

    Returns:
        ``(λ, ℓ, info)``: ℓ None when kept; info with the criterion ‖g − g_IS‖/‖g_IS‖ at the
        choice and the number of candidates scored.
    """
    base = float(kernel.lengthscale.detach())
    ref_norm = float(reference.norm()) or 1.0
    m = features.shape[0]
    eye = torch.eye(m, dtype=features.dtype, device=features.device)
    best = (math.inf, lams[0], 1.0)
    scored = 0
    for factor in factors if lengthscale else (1.0,):
        ell = torch.tensor(base * factor, dtype=features.dtype, device=features.device)
        with torch.no_grad():
            k = gram(features, None, kernel=kernel.name, lengthscale=ell, backend=kernel.backend)
            rhs = gram(
                features, wake_features, kernel=kernel.name, lengthscale=ell,
                backend=kernel.backend,
            ) @ wake_weights.to(features.dtype)  # fmt: skip
        here, rises = math.inf, 0
        for lam in lams:
            with torch.no_grad():
                chol, info = torch.linalg.cholesky_ex(k + lam * eye)
            if int(info) != 0:
                continue
            weights = torch.cholesky_solve(rhs, chol)
            value = float((gradient_of(weights) - reference).norm()) / ref_norm
            scored += 1
            if not math.isfinite(value):
                continue
            if value < best[0]:
                best = (value, lam, factor)
            if value < here:
                here, rises = value, 0
            else:
                rises += 1
                if rises >= IMPORTANCE_PATIENCE:
                    break
    value, lam, factor = best
    if not math.isfinite(value):
        raise ImportanceFailed("no candidate (ℓ, λ) gave a finite gradient")
    return lam, (base * factor if lengthscale else None), {
        "importance_criterion": value, "importance_candidates": float(scored),
    }  # fmt: skip
