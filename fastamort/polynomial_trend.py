"""Semi-parametric kernel ridge regression: an unpenalised polynomial trend beside the kernel.

``trend=d`` of :func:`fastamort.amortised_estimate` and :class:`fastamort.AmortisedLearner`.
The prediction at x is p(x)ᵀβ + k(x, X)α, with p the monomials of degree ≤ d of the
standardised features φ(x) (q of them) and β unpenalised; minimising
‖t − Pβ − Kα‖² + λ αᵀKα gives β = (PᵀGP)⁻¹PᵀG t and α = G(t − Pβ), G = (K + λI)⁻¹. The
estimator needs only the wake-weighted sum, so the weights are

    W = W₀ + R H⁻¹ (P_wᵀV − PᵀW₀),   W₀ = G K_sw V,  R = G P,  H = PᵀR,

one Cholesky factorisation of K + λI for the right-hand sides [K_sw V, P], and a q × q solve.
Every polynomial of degree ≤ d is reproduced exactly at the wake points: WᵀP = VᵀP_w.

Why: a kernel regression smooths each wake point's prediction over the sleep points around
it, and Σ_m a_nm ‖x_n − x_m‖² > 0 enters the estimated E‖x − μ(z)‖² of a Gaussian likelihood
as if it were noise. On the ica experiment's synthetic problems at the true mixing matrix
(σ = 0.1, M = 1000, λ = 1e-2) the plain regression estimates E‖x − As‖² at 2.6× its value,
which pulls the learned σ up; with ``trend=2`` the ratio is 1.05 ± 0.2
(``docs/results/ica-analysis``). Not a free gain, hence off by default: for one gradient of a
model far from its data the wake points lie off the sleep distribution, where a polynomial
extrapolates. On the gradient-estimation experiment's problems (M = 2000, 4 sleep sets, the
default λ rule) the relative error to the exact gradient was 0.128 with ``trend=2`` against
0.076 without (factor analysis) and 0.123 against 0.052 (the mixture). Degree 2 needs
q = 1 + D + D(D + 1)/2 terms, so it suits low-dimensional features.
"""

from __future__ import annotations

import math

import torch

from .kernels import Kernel
from .solvers.exact import exact_solve

__all__ = ["TREND_DEGREES", "check_trend", "polynomial_features", "trend_terms", "trend_weights"]

#: The degrees ``trend=`` takes: a constant, linear, or quadratic trend.
TREND_DEGREES = (0, 1, 2)


def check_trend(trend: object) -> int | None:
    """``trend`` as an int of :data:`TREND_DEGREES`, or None; ValueError naming it otherwise."""
    if trend is None:
        return None
    if isinstance(trend, bool) or not isinstance(trend, int) or trend not in TREND_DEGREES:
        raise ValueError(
            f"trend: expected None or a polynomial degree in {TREND_DEGREES}, got {trend!r}"
        )
    return trend


def trend_terms(dim: int, degree: int) -> int:
    """q, the number of monomials of degree ≤ ``degree`` (≤ 2) in ``dim`` variables."""
    return (1, 1 + dim, 1 + dim + dim * (dim + 1) // 2)[degree]


def polynomial_features(
    f: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor, degree: int
) -> torch.Tensor:
    """[1, u_i, u_i u_j (i ≤ j)] up to ``degree`` of u = (f − centre)/scale: (n, D) → (n, q)."""
    u = (f - centre) / scale
    cols = [torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)]
    if degree >= 1:
        cols.append(u)
    if degree >= 2:
        i, j = torch.triu_indices(u.shape[1], u.shape[1], device=u.device)
        cols.append(u[:, i] * u[:, j])
    return torch.cat(cols, 1)


@torch.no_grad()
def trend_weights(
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor,
    lam: float,
    degree: int,
) -> tuple[torch.Tensor, dict]:
    """W (M, P) of the regression with a polynomial trend of ``degree`` (see the module
    docstring) for sleep features fs (M, D), wake features fw (N, D) and wake weights
    v (N, P); float64. The info dict holds ``solver`` ("exact"), ``trend`` and ``trend_terms``
    (q).

    ValueError naming ``trend`` when there are not more sleep points than terms, or when the
    sleep points' monomials are linearly dependent (e.g. a constant feature).
    """
    fs, fw, v = (t.to(torch.float64) for t in (fs, fw, v))
    m, dim = fs.shape
    q = trend_terms(dim, degree)
    if q >= m:
        raise ValueError(
            f"trend: degree {degree} in D = {dim} feature dimensions has {q} terms, not fewer "
            f"than the M = {m} sleep points; lower the degree or draw more sleep samples"
        )
    centre = fs.mean(0)
    scale = fs.std(0)  # m > q ≥ 1 points
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    p_sleep = polynomial_features(fs, centre, scale, degree)
    p_wake = polynomial_features(fw, centre, scale, degree)
    rhs = kernel.gram_matmul_features(fs, fw, v).to(torch.float64)
    solved = exact_solve(
        kernel.gram_features(fs).to(torch.float64), torch.cat([rhs, p_sleep], 1), lam,
        kernel.backend,
    )  # fmt: skip
    w0, r = solved[:, : rhs.shape[1]], solved[:, rhs.shape[1] :]
    h = p_sleep.T @ r
    h = (h + h.T) / 2
    chol, bad = torch.linalg.cholesky_ex(h)
    if bad or not bool(torch.isfinite(chol).all()):
        raise ValueError(
            f"trend: the {q} degree-{degree} monomials of the sleep features are linearly "
            "dependent (a constant or duplicated feature?); lower the degree"
        )
    beta = torch.cholesky_solve(p_wake.T @ v - p_sleep.T @ w0, chol)
    if not math.isfinite(float(beta.abs().max())):
        raise ValueError("trend: the trend's coefficients are not finite (ill-conditioned)")
    info = {"solver": "exact", "contracted": False, "trend": degree, "trend_terms": q}
    return w0 + r @ beta, info
