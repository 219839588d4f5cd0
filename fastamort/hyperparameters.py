"""Kernel hyper-parameters chosen from the data: the ridge λ (and the lengthscale ℓ).

Three rules, named by the ``lam=`` argument of :func:`fastamort.amortised_objective` (all
three) and of :class:`fastamort.AmortisedLearner` (the last two):

``"importance"`` (the default of the functional API for exponential-family models): the (ℓ, λ)
of the grid below whose θ-gradient is closest to a prior-proposal importance-sampling gradient
at the wake batch (:mod:`fastamort.importance_rule`); it needs the model and the wake batch,
so it runs inside :func:`fastamort.amortised_estimate`.

``"evidence"`` (the functional API's default for other models): the (ℓ, λ) of largest
Gaussian-process marginal likelihood of the regression targets (:func:`log_evidence`), ℓ over
:data:`LENGTHSCALE_FACTORS` × the median heuristic (only where the kernel's lengthscale was not
given), λ over :data:`LAMBDA_GRID`, on at most :data:`EVIDENCE_MAX_POINTS` sleep points.

``"loo"`` (the learner's default, where the kernel is learned afterwards): λ by leave-one-out
error of the targets at the sleep points at the median-heuristic lengthscale
(:func:`choose_lambda`).

Measured against exact gradients (docs/RESULTS.md, gradient-estimation): the evidence and
leave-one-out rules score the regression at the sleep points only. On factor analysis the
evidence matches the best (ℓ, λ) of a grid chosen with the exact gradient; on the Gaussian
mixture, whose wake data lie off the model's clusters, neither comes within 2× of that oracle,
and sleep points weighted towards the wake batch did no better. The importance rule is within
the oracle on both. In training, the leave-one-out start gave better results than the
evidence (images FID 0.63 and 0.73 against 1.95 and 1.06).

:data:`LEARNED_LAMBDA_RANGE` is the range the learner keeps a learned λ in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .kernels import Kernel
from .ops import gram
from .solvers._common import KRR_DTYPE

#: λ grid of the automatic choice (absolute: the kernels here have k(x, x) = 1). It starts at
#: 1e-3: leave-one-out error at the sleep points cannot see the wake points, which lie off the
#: model's sample distribution while the model is wrong, and near-interpolating λ (chosen for
#: mixtures with separated clusters) then extrapolates badly there (measured: cosine to the
#: exact gradient 0.06–0.84 at λ ≤ 1e-6 against ≥ 0.98 for λ in [1e-3, 1]).
LAMBDA_GRID = tuple(10.0 ** (k / 2) for k in range(-6, 5))
#: An interior minimum of the leave-one-out curve within this relative margin of a best at the
#: top of the grid wins over it (see :func:`pick_lambda`).
LAMBDA_TIE = 0.10
#: The range :class:`fastamort.AmortisedLearner` keeps a learned λ in: log λ is clamped to it
#: after every kernel step, with a :class:`LambdaBoundWarning` (and ``lam_at_bound`` in the
#: step's record) when it hits a bound. Below it the regression nearly interpolates and its
#: weights extrapolate badly to wake points off the sleep distribution (measured on the
#: gradient-estimation problems: relative error 0.3–5 at λ = 1e-5, cosine 0.06–0.84 at
#: λ ≤ 1e-6); above it only the top eigenvector of K survives, the mean predictor, whose
#: gradient ignores the wake data (the nmf stall at λ = 100).
LEARNED_LAMBDA_RANGE = (1e-4, 1e2)


class LambdaBoundWarning(UserWarning):
    """A learned λ reached a bound of :data:`LEARNED_LAMBDA_RANGE` and was clamped to it."""


def clamp_log_lambda(log_lam: torch.Tensor) -> str | None:
    """Clamps the 0-d parameter ``log_lam`` into log :data:`LEARNED_LAMBDA_RANGE` in place;
    returns "lower" or "upper" when it was outside (or on) a bound, else None."""
    lo, hi = (math.log(b) for b in LEARNED_LAMBDA_RANGE)
    value = float(log_lam.detach())
    if lo < value < hi:
        return None
    with torch.no_grad():
        log_lam.clamp_(lo, hi)
    return "lower" if not value > lo else "upper"


#: At most this many sleep points enter the leave-one-out choice of λ (cost O(m³)).
LAMBDA_MAX_POINTS = 2000


def subsample_indices(m: int, cap: int, device: torch.device) -> torch.Tensor | None:
    """A fixed random subset of ``cap`` of ``m`` rows (the same for every call), or None when
    ``m <= cap``: the rules that choose on at most ``cap`` sleep points."""
    if m <= cap:
        return None
    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.randperm(m, generator=g)[:cap].to(device)


@torch.no_grad()
def choose_lambda(
    features: torch.Tensor,
    kernel: Kernel,
    targets: torch.Tensor,
    stats: torch.Tensor | None = None,
    grid: tuple[float, ...] = LAMBDA_GRID,
) -> float:
    """λ with the smallest leave-one-out error of the predicted log joint at sleep points.

    With K = U diag(d) Uᵀ, the hat matrix is H = U diag(d/(d+λ)) Uᵀ and the LOO residual of
    a target t is (t − Ht)/(1 − H_ii), for every λ from one eigendecomposition. For the
    exponential-family targets [ψ, η] the scored residual is r_η·S(x_i) − r_ψ.
    """
    idx = subsample_indices(features.shape[0], LAMBDA_MAX_POINTS, features.device)
    if idx is not None:
        features, targets = features[idx], targets[idx]
        stats = None if stats is None else stats[idx]
    k = kernel.gram_features(features.to(KRR_DTYPE))
    d, u = torch.linalg.eigh(k)
    d = d.clamp_min(0.0)
    t = targets.detach().to(KRR_DTYPE)
    ut = u.mT @ t
    u2 = u * u
    errors = []
    for lam in grid:
        shrink = d / (d + lam)
        fitted = u @ (shrink[:, None] * ut)
        h_diag = u2 @ shrink
        resid = (t - fitted) / (1.0 - h_diag).clamp_min(1e-12)[:, None]
        if stats is None:
            err = resid.square().mean()
        else:
            s = stats.detach().to(KRR_DTYPE)
            err = ((resid[:, 1:] * s).sum(-1) - resid[:, 0]).square().mean()
        errors.append(float(err))
    return pick_lambda(grid, errors)


def pick_lambda(grid: Sequence[float], errors: Sequence[float]) -> float:
    """The λ of the leave-one-out curve ``errors`` (one per λ of the increasing ``grid``).

    The smallest error wins, except at the top of the grid: when the best λ is the largest
    and an interior local minimum lies within :data:`LAMBDA_TIE` of it, the best interior
    minimum wins. The top one is then the mean predictor (only the top eigenvector of K
    survives the shrinkage): about as good at the sleep points, but its gradient ignores the
    wake data and learning stalls (measured on the ``nmf`` model at initialisation, M = 1000,
    seeds 0 and 2: λ = 100 at 12.32 and 12.11 against λ = 1 at 12.50 and 13.07; between them
    the error is 3× higher).
    """
    errs = [e if math.isfinite(e) else math.inf for e in errors]
    best = min(errs)
    if not math.isfinite(best):
        return grid[0]
    i_best = errs.index(best)
    if i_best == len(errs) - 1:
        interior = [
            i for i in range(1, len(errs) - 1) if errs[i] <= errs[i - 1] and errs[i] <= errs[i + 1]
        ]
        if interior:
            i_min = min(interior, key=lambda i: errs[i])
            if errs[i_min] <= best * (1.0 + LAMBDA_TIE):
                return grid[i_min]
    return grid[i_best]


#: Names of the automatic rules (``lam=`` of :func:`fastamort.amortised_objective` and of
#: :class:`fastamort.AmortisedLearner`); the first is the default.
LAMBDA_RULES = ("importance", "evidence", "loo")
#: Lengthscale candidates of the ``"evidence"`` rule, as multiples of the median heuristic:
#: half to four times it. Smaller ones fit sharp features at the sleep points but cannot reach
#: wake points off the sleep distribution (measured on the gradient-estimation mixture, M =
#: 2000, 3 seeds: the evidence's pick at 0.35× gave relative errors 0.18–0.23, the best at
#: 0.5× or more 0.04–0.11; a wake-importance-resampled evidence picked the same as this one).
LENGTHSCALE_FACTORS = tuple(2.0 ** (k / 2) for k in range(-2, 5))
#: At most this many sleep points enter the ``"evidence"`` rule (cost O(m³) per lengthscale).
EVIDENCE_MAX_POINTS = 1000


def check_rule(lam: object) -> str | None:
    """The rule named by ``lam`` (None: the default one), or None when ``lam`` is a value."""
    if lam is None:
        return LAMBDA_RULES[0]
    if isinstance(lam, str):
        if lam not in LAMBDA_RULES:
            raise TypeError(
                f"lam: expected a number, a one-element tensor or one of the rules "
                f"{', '.join(map(repr, LAMBDA_RULES))}, got {lam!r}"
            )
        return lam
    return None


@torch.no_grad()
def log_evidence(
    features: torch.Tensor,
    kernel: Kernel,
    targets: torch.Tensor,
    lengthscale: float,
    grid: Sequence[float] = LAMBDA_GRID,
) -> list[float]:
    """Gaussian-process log marginal likelihood of the regression targets, per λ of ``grid``.

    Each target column t (M,) that is not constant (a constant is fitted exactly by any smooth
    function, so it would drive λ to 0) is modelled as t ~ N(0, s²(K + λI)), K the
    kernel matrix at ``lengthscale``, with the amplitude s² at its maximum-likelihood value
    tᵀ(K + λI)⁻¹t / M; the columns are independent and share (ℓ, λ). Up to a constant,
    log p = −½ Σ_t [M log(tᵀ(K + λI)⁻¹t / M) + log det(K + λI)], from one eigendecomposition
    of K for the whole grid. λ = σ²/s² is then a noise-to-signal ratio, which does not
    depend on M: the choice made on a subsample holds for the full sleep set.
    """
    f = features.to(KRR_DTYPE)
    k = _gram_at(kernel, f, lengthscale)
    d, u = torch.linalg.eigh(k)
    d = d.clamp_min(0.0)
    t = targets.detach().to(KRR_DTYPE)
    scale = t.abs().amax(0)
    t = t[:, (t - t.mean(0)).abs().amax(0) > 1e-9 * scale]  # constant columns: no information
    m = t.shape[0]
    if t.shape[1] == 0:
        return [0.0 for _ in grid]
    proj = (u.mT @ t).square()  # (M, C)
    out = []
    for lam in grid:
        shifted = d + lam
        quad = (proj / shifted[:, None]).sum(0).clamp_min(torch.finfo(KRR_DTYPE).tiny)
        value = -0.5 * float((m * (quad / m).log() + shifted.log().sum()).sum())
        out.append(value if math.isfinite(value) else -math.inf)
    return out


def _gram_at(kernel: Kernel, f: torch.Tensor, lengthscale: float) -> torch.Tensor:
    """k(f, f) at ``lengthscale`` instead of the kernel's own (the kernel is not changed)."""
    ell = torch.tensor(lengthscale, dtype=f.dtype, device=f.device)
    return gram(f, None, kernel=kernel.name, lengthscale=ell, backend=kernel.backend)


@torch.no_grad()
def choose_hyperparameters(
    features: torch.Tensor,
    kernel: Kernel,
    targets: torch.Tensor,
    stats: torch.Tensor | None = None,
    *,
    rule: str = "evidence",
    lengthscale: bool = True,
) -> tuple[float, float | None]:
    """λ (and ℓ) for the regression of ``targets`` (M, C) on ``features`` (M, D).

    ``"evidence"``: the (ℓ, λ) of largest Gaussian-process marginal likelihood
    (:func:`log_evidence`) over ℓ = the kernel's lengthscale (the median heuristic) ×
    :data:`LENGTHSCALE_FACTORS` (only the kernel's own when ``lengthscale`` is False) and
    λ in :data:`LAMBDA_GRID`, on at most :data:`EVIDENCE_MAX_POINTS` sleep points.
    ``"loo"``: λ by leave-one-out error at the kernel's lengthscale (:func:`choose_lambda`).

    Returns ``(λ, ℓ)``, with ℓ None when the kernel's lengthscale is to be kept.
    """
    if rule == "loo":
        return choose_lambda(features, kernel, targets, stats), None
    if rule == "importance":
        raise ValueError(
            "rule: 'importance' needs the model and the wake batch; it runs inside "
            "fastamort.amortised_estimate / amortised_objective"
        )
    if rule != "evidence":
        check_rule(rule)
    idx = subsample_indices(features.shape[0], EVIDENCE_MAX_POINTS, features.device)
    if idx is not None:
        features, targets = features[idx], targets[idx]
    base = float(kernel.lengthscale.detach())
    factors = LENGTHSCALE_FACTORS if lengthscale else (1.0,)
    best = (-math.inf, LAMBDA_GRID[0], 1.0)
    for factor in factors:
        for lam, value in zip(
            LAMBDA_GRID,
            log_evidence(features, kernel, targets, base * factor, LAMBDA_GRID),
            strict=True,
        ):
            if value > best[0]:
                best = (value, lam, factor)
    _, lam, factor = best
    return lam, (base * factor if lengthscale else None)
