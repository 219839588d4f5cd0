"""Kernel matrices behind :class:`fastamort.KernelRidge`, in scikit-learn's kernel names
(torch only, no sklearn). The dual solve is in :mod:`fastamort._dual_solve`.

Kernel names follow scikit-learn's ``pairwise_kernels``; ``gamma`` maps onto fastamort's
lengthscale for the kernels the engines compute natively (fused Gram / Gram-matmul):

==============  ===========================  =================================
name            k(x, y)                      fastamort kernel, lengthscale ℓ
==============  ===========================  =================================
``rbf``         exp(−γ‖x − y‖²)              ``gaussian``, ℓ = 1/√(2γ)
``laplacian``   exp(−γ‖x − y‖₁)              ``laplacian``, ℓ = 1/γ
``matern12``    exp(−r/ℓ)                    ``matern12``, ℓ = 1/√(2γ)
``matern32``    (1 + √3 r/ℓ) exp(−√3 r/ℓ)    ``matern32``, ℓ = 1/√(2γ)
``matern52``    (1 + a + a²/3) exp(−a),      ``matern52``, ℓ = 1/√(2γ)
                a = √5 r/ℓ
==============  ===========================  =================================

(r = ‖x − y‖₂.) The Matérn kernels use the same γ ↔ ℓ map as ``rbf``, so one ``gamma``
gives the same lengthscale across the family (as ``sklearn.gaussian_process.kernels.RBF``
and ``Matern`` with one ``length_scale``), and ``gamma=None`` means 1/n_features for every
kernel but ``chi2`` (γ = 1, the default of sklearn's ``chi2_kernel``).

The other kernels (``linear``, ``poly``/``polynomial``, ``sigmoid``, ``cosine``,
``additive_chi2``, ``chi2``) are built with torch GEMMs / reductions; their predictions are
taken in row blocks (``linear``: through ``X_fit_ᵀ·dual_coef_``), so no n_test × n_train
matrix is held at once either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .ops.gram import gram
from .ops.gram_matmul import gram_matmul

#: scikit-learn's ``PAIRWISE_KERNEL_FUNCTIONS`` names.
SKLEARN_KERNELS = (
    "additive_chi2",
    "chi2",
    "cosine",
    "laplacian",
    "linear",
    "poly",
    "polynomial",
    "rbf",
    "sigmoid",
)
#: Kernel names added by fastamort.
EXTRA_KERNELS = ("matern12", "matern32", "matern52")
#: Every string ``kernel`` KernelRidge accepts.
KERNEL_CHOICES = (*SKLEARN_KERNELS, *EXTRA_KERNELS, "precomputed")
#: KernelRidge name → fastamort kernel (computed natively by the fused Gram and Gram-matmul).
NATIVE = {
    "rbf": "gaussian",
    "laplacian": "laplacian",
    "matern12": "matern12",
    "matern32": "matern32",
    "matern52": "matern52",
}
#: Entries of one block of a Gram matrix taken for a prediction (32 MiB of float64).
BLOCK_ENTRIES = 1 << 22


def resolve_gamma(kernel: str, gamma: float | None, n_features: int) -> float:
    """γ for a string kernel: the given value, else 1/n_features (1 for ``chi2``)."""
    if gamma is not None:
        return float(gamma)
    if kernel == "chi2":
        return 1.0
    return 1.0 / max(n_features, 1)


def lengthscale_for(kernel: str, gamma: float) -> float:
    """The fastamort lengthscale ℓ of a native kernel for γ > 0 (see the module table)."""
    if kernel == "laplacian":
        return 1.0 / gamma
    return 1.0 / math.sqrt(2.0 * gamma)


# --------------------------------------------------------------------------------------
# Gram matrices of the non-native kernels (torch), in sklearn's conventions
# --------------------------------------------------------------------------------------
def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ row-wise; zero rows stay zero (sklearn's ``normalize``)."""
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def _additive_chi2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−Σ_k (x_k − y_k)²/(x_k + y_k), 0/0 counted as 0; in row blocks (n·m·d memory)."""
    if bool((x < 0).any()):
        raise ValueError("X contains negative values.")
    if y is not x and bool((y < 0).any()):
        raise ValueError("Y contains negative values.")
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, BLOCK_ENTRIES // max(1, y.shape[0] * x.shape[1]))
    for i in range(0, x.shape[0], step):
        xb = x[i : i + step, None, :]
        num = (xb - y[None]).square()
        den = xb + y[None]
        zero = den == 0
        out[i : i + step] = -torch.where(zero, 0.0, num / torch.where(zero, 1.0, den)).sum(-1)
    return out


def pairwise_torch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    kernel: str,
    *,
    gamma: float | None,
    degree: float,
    coef0: float,
    backend: str = "auto",
) -> torch.Tensor:
    """K(x, y) (y None: K(x, x), exactly symmetric for the native kernels) for a string kernel."""
    other = x if y is None else y
    if kernel in NATIVE:
        g = resolve_gamma(kernel, gamma, x.shape[1])
        if g == 0.0:  # ℓ = ∞: every entry is k(0) = 1
            return torch.ones(x.shape[0], other.shape[0], dtype=x.dtype, device=x.device)
        return gram(
            x, y, kernel=NATIVE[kernel], lengthscale=lengthscale_for(kernel, g), backend=backend
        )
    if kernel == "linear":
        return x @ other.mT
    if kernel in ("poly", "polynomial"):
        g = resolve_gamma(kernel, gamma, x.shape[1])
        return (x @ other.mT).mul_(g).add_(coef0).pow_(degree)
    if kernel == "sigmoid":
        g = resolve_gamma(kernel, gamma, x.shape[1])
        return (x @ other.mT).mul_(g).add_(coef0).tanh_()
    if kernel == "cosine":
        xn = _normalize_rows(x)
        return xn @ (xn if y is None else _normalize_rows(y)).mT
    if kernel == "additive_chi2":
        return _additive_chi2(x, other)
    if kernel == "chi2":
        return _additive_chi2(x, other).mul_(resolve_gamma(kernel, gamma, x.shape[1])).exp_()
    raise ValueError(f"kernel: unknown kernel {kernel!r}; expected one of {KERNEL_CHOICES}")


def kernel_times(
    x: torch.Tensor,
    x_fit: torch.Tensor,
    coef: torch.Tensor,
    kernel: str,
    *,
    gamma: float | None,
    degree: float,
    coef0: float,
    backend: str = "auto",
) -> torch.Tensor:
    """K(x, x_fit) @ coef (coef (n, p)) without holding the whole (m, n) matrix."""
    if kernel in NATIVE:
        g = resolve_gamma(kernel, gamma, x.shape[1])
        if g == 0.0:
            return coef.sum(0, keepdim=True).expand(x.shape[0], -1).clone()
        return gram_matmul(
            x,
            x_fit,
            coef,
            kernel=NATIVE[kernel],
            lengthscale=lengthscale_for(kernel, g),
            backend=backend,
        )
    if kernel == "linear":  # x·(x_fitᵀ·coef): O((m + n)·d·p), no (m, n) block at all
        return x @ (x_fit.mT @ coef)
    out = torch.empty(x.shape[0], coef.shape[1], dtype=coef.dtype, device=coef.device)
    step = max(1, BLOCK_ENTRIES // max(1, x_fit.shape[0]))
    for i in range(0, x.shape[0], step):
        block = pairwise_torch(
            x[i : i + step], x_fit, kernel, gamma=gamma, degree=degree, coef0=coef0, backend=backend
        )
        out[i : i + step] = block @ coef
    return out


def pairwise_callable(
    x: np.ndarray, y: np.ndarray | None, func: Callable, params: dict
) -> np.ndarray:
    """K[i, j] = func(x_i, y_j, **params) on rows, without scikit-learn (its fallback)."""
    other = x if y is None else y
    out = np.empty((x.shape[0], other.shape[0]), dtype=np.float64)
    for i in range(x.shape[0]):
        start = i if y is None else 0
        for j in range(start, other.shape[0]):
            out[i, j] = func(x[i], other[j], **params)
            if y is None:
                out[j, i] = out[i, j]
    return out


def check_gram_finite(k: torch.Tensor, kernel: object, degree: float) -> None:
    """ValueError naming the kernel (and ``degree``) when K has NaN or ±inf entries.

    scikit-learn's solve raises a ValueError there too (scipy's ``check_finite``); a
    polynomial kernel with a non-integer degree is NaN wherever γ⟨x, y⟩ + coef0 < 0.
    """
    if not k.numel() or bool(torch.isfinite(k.sum())) or bool(torch.isfinite(k).all()):
        return
    name = kernel if isinstance(kernel, str) else getattr(kernel, "__name__", repr(kernel))
    message = f"kernel={name!r}: the kernel matrix of X contains NaN or infinite values"
    if kernel in ("poly", "polynomial") and not float(degree).is_integer():
        message += (
            f"; degree={degree} is not an integer, and gamma·<x, y> + coef0 is negative for "
            "some pairs of samples (a negative base to a fractional power is NaN). Use an "
            "integer degree, or a coef0/gamma that keeps the base non-negative"
        )
    elif kernel in ("poly", "polynomial"):
        message += f" (overflow: degree={degree} with large gamma·<x, y> + coef0)"
    raise ValueError(message + ".")
