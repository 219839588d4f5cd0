"""Nyström KRR: m inducing points Z from the sleep set, k(x, y) ≈ k(x, Z) K_ZZ⁺ k(Z, y).

The approximation is a feature map φ(x) = k(x, Z) T with T Tᵀ = K_ZZ⁺, so the weights come from
the primal ridge of :mod:`fastamort.solvers._common` in O(M m²) time and O(m² + chunk·m)
memory. Without gradients T = U S^{-1/2} from the eigendecomposition K_ZZ = U S Uᵀ, dropping
eigenvalues below :data:`EIG_RTOL`·max (so that m = M reproduces the exact estimator to
round-off even though K is numerically singular); with gradients (kernel learning) T = L⁻ᵀ
from a Cholesky factor of K_ZZ + jitter, whose backward pass is stable.

Inducing points: ``"uniform"`` (a uniform subsample) or ``"greedy"`` (the pivots of a
pivoted Cholesky factorisation of K, which picks the point of largest residual variance
k(x, x) − φ(x)·φ(x) each time; O(M m²) as well, with one kernel column per pivot).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels import Kernel
from ..ops import cholesky
from ..ops.kernel_math import kernel_at_zero
from ._common import KRR_DTYPE, FeatureMap, feature_ridge_weights

#: Eigenvalues of K_ZZ below this fraction of the largest are dropped (no-gradient path).
EIG_RTOL = 1e-12
#: Jitter added to K_ZZ before the Cholesky factor (gradient path), relative to k(0) = 1.
CHOLESKY_JITTER = 1e-8


@torch.no_grad()
def pivoted_cholesky(
    kernel: Kernel, fs: torch.Tensor, rank: int, *, rtol: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy pivoted Cholesky of K = k(fs, fs): pivots (r,) and factor L (r, M), K ≈ LᵀL.

    Stops early when the largest residual variance falls below ``rtol``·k(0). Needs only the
    diagonal and one kernel column per pivot (K is never formed).
    """
    m = fs.shape[0]
    rank = min(rank, m)
    diag = torch.full((m,), kernel_at_zero(), dtype=KRR_DTYPE, device=fs.device)
    factor = torch.empty(rank, m, dtype=KRR_DTYPE, device=fs.device)
    pivots: list[int] = []
    stop = rtol * kernel_at_zero()
    for j in range(rank):
        p = int(torch.argmax(diag))
        d = float(diag[p])
        if d <= stop:
            break
        col = kernel.gram_features(fs, fs[p : p + 1])[:, 0].to(KRR_DTYPE)
        if j:
            col -= factor[:j].mT @ factor[:j, p]
        col /= d**0.5
        factor[j] = col
        diag -= col * col
        diag[p] = 0.0
        diag.clamp_min_(0.0)
        pivots.append(p)
    r = len(pivots)
    return torch.tensor(pivots, dtype=torch.long, device=fs.device), factor[:r]


def select_inducing(
    kernel: Kernel,
    fs: torch.Tensor,
    m: int,
    rule: str = "uniform",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of m inducing points among the rows of ``fs`` (all of them when m ≥ M)."""
    n = fs.shape[0]
    if m >= n:
        return torch.arange(n, device=fs.device)
    if rule == "uniform":
        return torch.randperm(n, generator=generator)[:m].to(fs.device)
    if rule == "greedy":
        return pivoted_cholesky(kernel, fs.detach(), m)[0]
    raise ValueError(f"inducing: expected 'uniform' or 'greedy', got {rule!r}")


@torch.no_grad()
def nystrom_basis(kernel: Kernel, centres: torch.Tensor) -> torch.Tensor:
    """T = U S^{-1/2} (m, r) from K_ZZ = U S Uᵀ, eigenvalues below EIG_RTOL·max dropped."""
    kzz = kernel.gram_features(centres).to(KRR_DTYPE)
    s, u = torch.linalg.eigh(kzz)
    keep = s > EIG_RTOL * float(s.max().clamp_min(torch.finfo(KRR_DTYPE).tiny))
    return u[:, keep] * s[keep].rsqrt()


@torch.no_grad()
def nystrom_map(kernel: Kernel, centres: torch.Tensor) -> tuple[FeatureMap, int]:
    """φ(x) = k(x, Z) T with T = :func:`nystrom_basis`; returns (φ, rank)."""
    t = nystrom_basis(kernel, centres)

    def phi(f: torch.Tensor) -> torch.Tensor:
        return kernel.gram_features(f, centres).to(KRR_DTYPE) @ t

    return phi, t.shape[1]


def nystrom_map_differentiable(kernel: Kernel, centres: torch.Tensor) -> tuple[FeatureMap, int]:
    """φ(x) = L⁻¹ k(Z, x), L Lᵀ = K_ZZ + jitter·I; differentiable in the kernel and Z."""
    kzz = kernel.gram_features(centres).to(KRR_DTYPE)
    eye = torch.eye(kzz.shape[0], dtype=KRR_DTYPE, device=kzz.device)
    lower = cholesky(kzz + CHOLESKY_JITTER * kernel_at_zero() * eye, backend=kernel.backend)

    def phi(f: torch.Tensor) -> torch.Tensor:
        kzx = kernel.gram_features(centres, f).to(KRR_DTYPE)
        return torch.linalg.solve_triangular(lower, kzx, upper=False).mT

    return phi, kzz.shape[0]


def nystrom_feature_map(
    kernel: Kernel,
    fs: torch.Tensor,
    m: int,
    rule: str = "uniform",
    *,
    differentiable: bool = False,
) -> tuple[FeatureMap, int, torch.Tensor]:
    """(φ, rank, inducing indices) for m inducing points chosen from ``fs`` by ``rule``."""
    idx = select_inducing(kernel, fs, m, rule)
    make: Callable = nystrom_map_differentiable if differentiable else nystrom_map
    phi, rank = make(kernel, fs[idx])
    return phi, rank, idx


@torch.no_grad()
def nystrom_weights(
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor | None,
    lam: float,
    *,
    n_inducing: int,
    inducing: str = "uniform",
) -> tuple[torch.Tensor, dict]:
    """Nyström KRR weights W (M, P) ≈ (K + λI)⁻¹ K_sw V (V None: the identity), and an info dict.

    The final W = Φ_s y is k(X_s, Z)·(T y), one fused ``gram_matmul`` (no second pass).
    """
    idx = select_inducing(kernel, fs, n_inducing, inducing)
    centres = fs[idx]
    t = nystrom_basis(kernel, centres)

    def phi(f: torch.Tensor) -> torch.Tensor:
        return kernel.gram_features(f, centres).to(KRR_DTYPE) @ t

    def expand(y: torch.Tensor) -> torch.Tensor:
        return kernel.gram_matmul_features(fs, centres, t @ y)

    rank = t.shape[1]
    w = feature_ridge_weights(phi, fs, fw, v, lam, rank=rank, backend=kernel.backend, expand=expand)
    return w, {"n_inducing": int(idx.numel()), "rank": rank, "inducing": inducing}
