"""Stationary kernels as functions of a scaled distance ``s``, shared by every backend.

With ``r`` the Euclidean distance and ``ℓ`` the lengthscale:

==============  =====================  ======================================
name            s                      k(s)
==============  =====================  ======================================
``gaussian``    r²/ℓ²                  exp(−s/2)
``matern12``    r²/ℓ²                  exp(−√s)
``matern32``    r²/ℓ²                  (1 + a)·exp(−a),  a = √(3s)
``matern52``    r²/ℓ²                  (1 + a + 5s/3)·exp(−a),  a = √(5s)
``laplacian``   ‖x − y‖₁/ℓ             exp(−s)   (scikit-learn's, gamma = 1/ℓ)
==============  =====================  ======================================

The integer ids are the ones the C++ and Triton kernels use. Every backend clamps ``s`` at
:data:`S_MAX` before ``k(s)``: each kernel is exactly 0 beyond it in float32 and float64, and an
``s`` that overflowed to ∞ (a tiny lengthscale) then gives 0 instead of (1 + ∞)·0 = NaN.
"""

from __future__ import annotations

import math

import torch

KERNEL_IDS: dict[str, int] = {
    "gaussian": 0,
    "matern12": 1,
    "matern32": 2,
    "matern52": 3,
    "laplacian": 4,
}
KERNEL_NAMES: tuple[str, ...] = tuple(KERNEL_IDS)
#: Largest scaled distance used: k(S_MAX) underflows to 0 for every kernel (e^{−√1e7} = 0).
S_MAX = 1e7
LAPLACIAN = KERNEL_IDS["laplacian"]


def kernel_id(kernel: str) -> int:
    """Integer id of a kernel name; ``ValueError`` naming the valid ones otherwise."""
    if not isinstance(kernel, str) or kernel not in KERNEL_IDS:
        raise ValueError(
            f"kernel: unknown kernel {kernel!r}; expected one of {', '.join(KERNEL_NAMES)}"
        )
    return KERNEL_IDS[kernel]


def is_euclidean(kernel: str) -> bool:
    """True for kernels of the squared Euclidean distance (all but the Laplacian)."""
    return kernel != "laplacian"


def _safe_sqrt(s: torch.Tensor) -> torch.Tensor:
    """√s with a zero (not NaN) gradient at s = 0."""
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, torch.ones_like(s)).sqrt(), 0.0 * s)


def kernel_from_s(s: torch.Tensor, kernel: str) -> torch.Tensor:
    """k(s) elementwise, differentiable (by autograd) everywhere k is."""
    s = s.clamp(max=S_MAX)
    if kernel == "gaussian":
        return torch.exp(-0.5 * s)
    if kernel == "matern12":
        return torch.exp(-_safe_sqrt(s))
    if kernel == "matern32":
        a = _safe_sqrt(3.0 * s)
        return (1.0 + a) * torch.exp(-a)
    if kernel == "matern52":
        a = _safe_sqrt(5.0 * s)
        return (1.0 + a + (5.0 / 3.0) * s) * torch.exp(-a)
    if kernel == "laplacian":
        return torch.exp(-s)
    kernel_id(kernel)  # raises with the list of names
    raise AssertionError("unreachable")


def kernel_grad_from_s(s: torch.Tensor, kernel: str) -> torch.Tensor:
    """dk/ds elementwise (0 where k is not differentiable, at s = 0 for ``matern12``)."""
    s = s.clamp(max=S_MAX)
    if kernel == "gaussian":
        return -0.5 * torch.exp(-0.5 * s)
    if kernel == "matern12":
        r = _safe_sqrt(s)
        return torch.where(s > 0, -0.5 * torch.exp(-r) / torch.where(s > 0, r, 1.0), 0.0 * s)
    if kernel == "matern32":
        return -1.5 * torch.exp(-_safe_sqrt(3.0 * s))
    if kernel == "matern52":
        a = _safe_sqrt(5.0 * s)
        return -(5.0 / 6.0) * (1.0 + a) * torch.exp(-a)
    if kernel == "laplacian":
        return -torch.exp(-s)
    kernel_id(kernel)
    raise AssertionError("unreachable")


def kernel_at_zero() -> float:
    """k(0) for every kernel here: the exact diagonal of K(X, X)."""
    return 1.0


SQRT3 = math.sqrt(3.0)
SQRT5 = math.sqrt(5.0)
