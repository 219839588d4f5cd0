"""The dual solve behind :class:`fastamort.KernelRidge`, in scikit-learn's semantics (torch
only, no sklearn), and a plain-torch kernel ridge reference.

:func:`solve_dual` follows scikit-learn's ``_solve_cholesky_kernel``; large float64 CPU
solves use a float32 factor with float64 iterative refinement (:func:`solve_mixed`), which
returns float64-accurate solutions or declines.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .ops.cholesky import NotPSDError, NumericalWarning
from .ops.ridge_solve import ridge_solve
from .ops.ridge_solve_mixed import mixed_applies, solve_mixed

SINGULAR_WARNING = "Singular matrix in solving dual problem. Using least-squares solution instead."


# --------------------------------------------------------------------------------------
# The dual solve, in scikit-learn's semantics
# --------------------------------------------------------------------------------------
def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares with scipy's defaults (``gelsd``, rcond = eps)."""
    eps = float(torch.finfo(a.dtype).eps)
    sol = torch.linalg.lstsq(a.cpu(), b.cpu(), rcond=eps, driver="gelsd").solution
    return sol.to(b.device)


def _solve_one(
    k: torch.Tensor,
    b: torch.Tensor,
    alpha: float,
    backend: str,
    k_full: torch.Tensor | None = None,
) -> torch.Tensor:
    """(K + αI)⁻¹ b: one Cholesky; float64 falls back to least squares like sklearn.

    ``k`` is what the Cholesky (lower triangle) and the mixed-precision refinement read;
    ``k_full`` (default ``k``) is the matrix of the least-squares fallback (scikit-learn's
    ``lstsq`` reads the whole, possibly non-symmetric, matrix). A negative α (possible in an
    alpha array, as in scikit-learn) is added to the diagonal as given and the system solved
    with no ridge: a Cholesky when K + αI is still positive definite, else the fallback.
    """
    lam = alpha
    if alpha < 0:
        shifted = k.clone()
        shifted.diagonal().add_(alpha)
        if k_full is not None:
            k_full = k_full.clone()
            k_full.diagonal().add_(alpha)
        k, lam = shifted, 0.0
    if k_full is None:
        k_full = k
    if k.dtype == torch.float64:
        if mixed_applies(k, b.shape[1], backend):
            x = solve_mixed(k, b, lam, backend)
            if x is not None:
                return x
        try:
            with warnings.catch_warnings():
                # no jitter in float64: a failed factorisation means scikit-learn's lstsq
                warnings.simplefilter("error", NumericalWarning)
                return ridge_solve(k, b, lam, backend=backend)
        except (NumericalWarning, NotPSDError):
            warnings.warn(SINGULAR_WARNING, UserWarning, stacklevel=4)
            eye = torch.eye(k_full.shape[0], dtype=k_full.dtype, device=k_full.device)
            return _lstsq(k_full + lam * eye, b)
    try:
        return ridge_solve(k, b, lam, backend=backend)
    except NotPSDError as exc:
        n = k.shape[0]
        raise NotPSDError(
            f"KernelRidge: the kernel matrix plus alpha·I ({n}×{n}, {k.dtype}) is not "
            f"numerically positive definite with alpha={alpha:.3g}, even with jitter. "
            "Increase alpha or use float64 (dtype=torch.float64, the default for NumPy input)."
        ) from exc


def solve_dual(
    k: torch.Tensor,
    y: torch.Tensor,
    alpha: np.ndarray,
    sample_weight: torch.Tensor | None,
    *,
    backend: str = "auto",
    own_k: bool = False,
    upper: bool = False,
) -> torch.Tensor:
    """Dual coefficients c (n, p) of ``(K + α_j I) c_j = y_j`` per target j.

    Like ``sklearn.linear_model._ridge._solve_cholesky_kernel``: weights enter as
    K ← diag(√w) K diag(√w), y ← √w·y, c ← √w·c; one α for all targets (all equal) means one
    factorisation; otherwise one factorisation per distinct α. ``own_k``: K may be scaled in
    place. ``upper``: the factorisation reads K's upper triangle, as scipy's
    ``solve(assume_a="pos")`` does (for a user's, possibly non-symmetric, precomputed K); the
    least-squares fallback still reads the whole matrix, as scikit-learn's.
    """
    p = y.shape[1]
    sw = None
    if sample_weight is not None:
        sw = sample_weight.sqrt()
        k = k.mul_(sw[:, None]) if own_k else k * sw[:, None]
        k.mul_(sw[None, :])
        y = y * sw[:, None]
    k_full = None
    if upper and not torch.equal(k, k.mT):
        k_full = k
        k = k.triu() + k.triu(1).mT  # the symmetric matrix whose upper triangle is K's
    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64)).reshape(-1)
    if (alpha == alpha[0]).all():
        coef = _solve_one(k, y, float(alpha[0]), backend, k_full)
    else:
        if alpha.shape[0] != p:
            raise ValueError(
                f"alpha: expected one value per target ({p}), got an array of "
                f"length {alpha.shape[0]}"
            )
        coef = torch.empty_like(y)
        for value in np.unique(alpha):
            cols = torch.from_numpy(np.flatnonzero(alpha == value)).to(y.device)
            coef[:, cols] = _solve_one(k, y[:, cols].contiguous(), float(value), backend, k_full)
    if sw is not None:
        coef = coef * sw[:, None]
    return coef


# --------------------------------------------------------------------------------------
# Reference: the whole fit + predict in plain torch (shared by tests and benchmarks)
# --------------------------------------------------------------------------------------
def kernel_ridge_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    alpha: float = 1.0,
    gamma: float | None = None,
) -> torch.Tensor:
    """RBF kernel ridge in plain torch: K by ``cdist``, Cholesky, ``K_test @ c``.

    What a careful user would write without fastamort (the benchmark's torch baseline).
    """
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k = torch.cdist(x, x).square_().mul_(-g).exp_()
    k.diagonal().add_(alpha)
    lower = torch.linalg.cholesky(k)
    coef = torch.cholesky_solve(y.reshape(x.shape[0], -1), lower)
    k_test = torch.cdist(x_test, x).square_().mul_(-g).exp_()
    return (k_test @ coef).reshape(x_test.shape[0], *y.shape[1:])
