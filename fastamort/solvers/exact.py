"""The exact solve: one M×M Gram matrix and one Cholesky factorisation.

R = K_sw V by one fused ``gram_matmul`` (K_sw never stored), or R = K_sw itself when
:func:`fastamort.solvers.krr_weights` contracts with V afterwards (fewer right-hand sides).
O(M³) time, O(M²) memory.
"""

from __future__ import annotations

import torch

from .._backends import resolve_backend
from ..kernels import Kernel
from ..ops import ridge_solve
from ..ops.kernel_math import kernel_at_zero
from ..ops.ridge_solve_mixed import mixed_applies, ridge_solve_mixed

#: The "auto" precision runs the regression of float32 points in float32 from this many sleep
#: points on (below it the float64 factorisation costs a few milliseconds) ...
FLOAT32_MIN_POINTS = 1536
#: ... when the worst-case relative error of a float32 solve, κ·eps₃₂ ≤ M·k(0)·eps₃₂/λ, is at
#: most this. Measured on factor analysis (M = 2000-3000, λ = 1e-3-1, D = 6-784): float32
#: changes the estimated gradient by 6e-7 to 4e-3 relative within this bound (by up to 3e-2
#: outside it), against 0.2-0.4 for the estimate's own error to the exact gradient.
FLOAT32_MAX_ERROR = 0.05


def exact_solve(
    k: torch.Tensor, rhs: torch.Tensor, lam: float | torch.Tensor, backend: str
) -> torch.Tensor:
    """(K + λI)⁻¹ R for K (M, M), R (M, P), differentiable like :func:`fastamort.ridge_solve`.

    float64 Cholesky, or from M = ``MIXED_MIN_N`` on the CPU a float32 Cholesky refined in
    float64 to the same backward error, also in the backward pass
    (:mod:`fastamort.ops.ridge_solve_mixed`; measured M = 5000, λ = 1e-2: 335 against 618 ms),
    falling back to float64 when that declines.
    """
    if mixed_applies(k, rhs.shape[-1] if rhs.ndim == 2 else 1, backend):
        weights = ridge_solve_mixed(k, rhs, lam, backend)
        if weights is not None:
            return weights
    return ridge_solve(k, rhs, lam, backend=backend)


@torch.no_grad()
def exact_weights(
    kernel: Kernel, fs: torch.Tensor, fw: torch.Tensor, v: torch.Tensor | None, lam: float
) -> tuple[torch.Tensor, dict]:
    """W (M, P) = (K + λI)⁻¹ K_sw V exactly (:func:`exact_solve`; V None: the identity, P = N),
    and an (empty) info dict."""
    rhs = kernel.gram_features(fs, fw) if v is None else kernel.gram_matmul_features(fs, fw, v)
    return exact_solve(kernel.gram_features(fs), rhs, lam, kernel.backend), {}


def krr_dtype(
    points: torch.Tensor, lam: float, backend: str, precision: str = "auto"
) -> torch.dtype:
    """The dtype of the exact solver's Gram matrices and solves for sleep points (M, D).

    "float64" and "float32" are taken as they are. "auto" keeps float64 — the regression's
    own precision, whatever the model's — except for float32 points on a compiled backend
    with M ≥ :data:`FLOAT32_MIN_POINTS` and M·eps₃₂/λ ≤ :data:`FLOAT32_MAX_ERROR`: there
    float32 halves the Gram GEMM and the factorisation (the step's two largest costs) while
    moving the estimate by far less than its statistical error. The torch backend, the
    reference, always runs float64 under "auto".
    """
    if precision != "auto":
        return torch.float64 if precision == "float64" else torch.float32
    m = points.shape[0]
    eps32 = float(torch.finfo(torch.float32).eps)
    if (
        points.dtype != torch.float32
        or m < FLOAT32_MIN_POINTS
        or not lam > 0
        or m * kernel_at_zero() * eps32 / lam > FLOAT32_MAX_ERROR
    ):
        return torch.float64
    if resolve_backend("ridge_solve", backend, points.device) == "torch":
        return torch.float64
    return torch.float32
