"""Preconditioned conjugate gradient on (K + λI) W = K_sw V, K never stored, warm-started.

* Products K P use the fused :func:`fastamort.gram_matmul` (tiles of K live in cache only), so
  memory is O(M·(P + r)); time is O(M² D) per iteration.
* Block CG: the 1 + P right-hand sides run together (one fused product per iteration for all
  of them), each with its own step sizes; a column stops once its relative residual
  ‖b − A w‖ / ‖b‖ ≤ ``tol`` (default :data:`DEFAULT_TOL`), and later products skip it.
* Preconditioner: P = ΦΦᵀ + λI with Φ the rank-r Nyström features (uniform inducing points)
  or the pivoted-Cholesky factor (``inducing="greedy"``), applied by Woodbury:
  P⁻¹ r = (r − Φ (λI + ΦᵀΦ)⁻¹ Φᵀ r) / λ.
* Warm start (:class:`WarmStart`): the previous step's solution W_old on its sleep set X_old
  is mapped onto the new sleep set by its own Nyström extension: (K + λI) W = R gives
  W = (R − K W)/λ at every sleep point, and evaluating the right side at the new points,
  W₀ = (R_new − k(X_new, X_old) W_old)/λ · M_old/M_new,
  which returns W_old exactly on points carried over from the old set (and the exact
  solution when nothing moved). It costs one extra fused product; a column whose initial
  residual is worse than a cold start's falls back to zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernels import Kernel
from ..ops import cholesky
from ..ops.cholesky import NumericalWarning
from ._common import KRR_DTYPE, check_finite_weights
from .nystrom import nystrom_feature_map, pivoted_cholesky


@dataclass
class WarmStart:
    """A previous solve to start from: its sleep observations (M_old, ...) and weights
    W_old (M_old, P). ``aligned``: row i of the new sleep set is the successor of row i of the
    old one (the same sampling noise under the moved model, see
    :class:`fastamort.AmortisedLearner`'s ``sleep_refresh``), so W₀ = W_old row by row."""

    x: torch.Tensor
    weights: torch.Tensor
    aligned: bool = False


@dataclass
class CGResult:
    x: torch.Tensor
    iterations: int
    residual: float  # the largest relative residual over the columns
    converged: bool
    products: int  # fused (K + λI)·block products, including the warm start's


def block_pcg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> CGResult:
    """Solves A X = B (A symmetric positive definite, given by ``matvec``) column by column.

    ``matvec`` receives only the columns still running. Stops when every column's
    ‖b − A x‖ / ‖b‖ ≤ ``tol`` or after ``max_iter`` iterations.
    """
    bnorm = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
    products = 0
    if x0 is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
        products += 1
        worse = r.norm(dim=0) > bnorm  # a warm start that hurts a column: start it cold
        if bool(worse.any()):
            x[:, worse] = 0.0
            r[:, worse] = b[:, worse]
    rel = r.norm(dim=0) / bnorm
    active = rel > tol
    it = 0
    if bool(active.any()):
        z = precond(r) if precond is not None else r.clone()
        p = z.clone()
        rz = (r * z).sum(0)
        while it < max_iter:
            cols = active.nonzero().squeeze(1)
            q = torch.zeros_like(p)
            q[:, cols] = matvec(p[:, cols])
            products += 1
            it += 1
            pq = (p * q).sum(0)
            alpha = torch.where(active, rz / torch.where(active, pq, 1.0), 0.0)
            x += alpha * p
            r -= alpha * q
            rel = r.norm(dim=0) / bnorm
            active = rel > tol
            if not bool(active.any()):
                break
            z = precond(r) if precond is not None else r.clone()
            rz_new = (r * z).sum(0)
            beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
            p = z + beta * p
            rz = rz_new
    return CGResult(x, it, float(rel.max()), bool((rel <= tol).all()), products)


def woodbury_preconditioner(
    phi: torch.Tensor, lam: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """r ↦ (ΦΦᵀ + λI)⁻¹ r for features Φ (M, r), by Woodbury (one r×r Cholesky)."""
    inner = phi.mT @ phi
    inner.diagonal().add_(lam)
    lower = cholesky(inner)

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = torch.cholesky_solve(phi.mT @ r, lower)
        return (r - phi @ y) / lam

    return apply


@torch.no_grad()
def preconditioner_features(
    kernel: Kernel, fs: torch.Tensor, rank: int, rule: str = "uniform"
) -> torch.Tensor:
    """Φ (M, r) with ΦΦᵀ ≈ K: Nyström features on ``rank`` inducing points (uniform), or the
    greedy pivoted-Cholesky factor (``"greedy"``)."""
    if rule == "greedy":
        return pivoted_cholesky(kernel, fs, rank)[1].mT
    phi, _, _ = nystrom_feature_map(kernel, fs, rank, "uniform")
    return phi(fs)


@torch.no_grad()
def map_warm_start(
    kernel: Kernel, fs: torch.Tensor, rhs: torch.Tensor, lam: float, warm: WarmStart
) -> torch.Tensor:
    """W₀ on the new sleep points from a previous solution (see the module docstring)."""
    w_old = warm.weights.to(KRR_DTYPE)
    if warm.aligned and w_old.shape[0] == fs.shape[0]:
        return w_old.clone()
    f_old = kernel.features(warm.x.detach()).to(KRR_DTYPE)
    k_w = kernel.gram_matmul_features(fs, f_old, w_old)
    return (rhs - k_w) / lam * (f_old.shape[0] / fs.shape[0])


@torch.no_grad()
def cg_weights(
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor | None,
    lam: float,
    *,
    tol: float,
    n_inducing: int,
    inducing: str = "uniform",
    max_iter: int = 200,
    warm_start: WarmStart | None = None,
) -> tuple[torch.Tensor, dict]:
    """W (M, P) = (K + λI)⁻¹ K_sw V by preconditioned block CG (V None: the identity, P = N),
    and an info dict (iterations, products, residual, converged, warm_started)."""
    if not lam > 0:
        raise ValueError(f"solver='cg' needs lam > 0 (K + λI must be definite), got {lam}")
    rhs = kernel.gram_features(fs, fw) if v is None else kernel.gram_matmul_features(fs, fw, v)
    x0 = None
    if warm_start is not None:
        if warm_start.weights.shape[1] != rhs.shape[1]:
            raise ValueError(
                f"warm_start: the previous solution has {warm_start.weights.shape[1]} "
                f"columns, this problem {rhs.shape[1]} (another estimator?)"
            )
        x0 = map_warm_start(kernel, fs, rhs, lam, warm_start)
    precond = None
    rank = 0
    if n_inducing > 0:
        phi = preconditioner_features(kernel, fs, min(n_inducing, fs.shape[0]), inducing)
        rank = phi.shape[1]
        precond = woodbury_preconditioner(phi, lam)

    def matvec(p: torch.Tensor) -> torch.Tensor:
        return kernel.gram_matmul_features(fs, None, p) + lam * p

    res = block_pcg(matvec, rhs, precond=precond, x0=x0, tol=tol, max_iter=max_iter)
    if not res.converged:
        warnings.warn(
            f"solver='cg': not converged after {res.iterations} iterations (relative residual "
            f"{res.residual:.3g} > tol {tol:.3g}); the weights are inaccurate. Increase lam, "
            "n_inducing or max_iter, or use solver='exact'",
            NumericalWarning,
            stacklevel=2,
        )
    info = {
        "iterations": res.iterations,
        "products": res.products + (1 if x0 is not None and not warm_start.aligned else 0),
        "residual": res.residual,
        "converged": res.converged,
        "warm_started": x0 is not None,
        "rank": rank,
        "tol": tol,
    }
    return check_finite_weights(res.x, "cg"), info
