"""Stationary kernels (covariance functions) as functions of a scaled distance ``s``, shared
by every backend.

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

The integer ids are the ones the C++ engines and the Triton kernels use. Every backend clamps
``s`` at :data:`S_MAX` before ``k(s)``: each kernel is exactly 0 beyond it in float32 and
float64, and an ``s`` that overflowed to ∞ (a tiny lengthscale) then gives 0 instead of
(1 + ∞)·0 = NaN.

Squared distances: every backend forms q = ‖x̃‖² + ‖ỹ‖² − 2 x̃·ỹ on points x̃, ỹ centred at a
robust centre (a per-coordinate median), then recomputes every entry with
‖x̃‖² + ‖ỹ‖² > :data:`DIRECT_RATIO`·q as the direct difference Σ (x − y)² of the raw points. The
GEMM trick errs by a few ulps of ‖x̃‖² + ‖ỹ‖², so each entry keeps a relative error of at most
about DIRECT_RATIO·D ulps, whatever the offsets of the points, outliers among them or far-apart
clusters.
"""

from __future__ import annotations

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
#: Entries whose centred squared norms exceed DIRECT_RATIO times their squared distance by the
#: GEMM trick are recomputed by direct differences (the C++ engine's kDirectRatio).
DIRECT_RATIO = 16.0


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


def lengthscale_factor_from_k(k: torch.Tensor, kernel: str) -> torch.Tensor:
    """ℓ·∂k/∂ℓ elementwise as a function of the kernel value ``k`` itself (no distances).

    With t = −log k: ``gaussian`` 2t·k; ``matern12`` and ``laplacian`` t·k; ``matern32``
    k·a²/(1 + a) with a − log(1 + a) = t; ``matern52`` k·(a²/3)(1 + a)/(1 + a + a²/3) with
    a − log(1 + a + a²/3) = t. ``a`` by Newton from t + √(ct) (c = 2, 6), which lies above the
    root of these convex increasing functions, so the steps fall monotonically onto it (4 steps
    in float32, 5 in float64: a few ulps). Below the smallest normal number it is 0. The same
    formulas as the C++ engine's ``ell_grad_from_k``. Not differentiable (a backward helper).
    """
    kid = kernel_id(kernel)
    live = k >= torch.finfo(k.dtype).tiny
    kc = torch.where(live, k, torch.ones_like(k))
    t = (-torch.log(kc)).clamp_min(0.0)
    if kernel == "gaussian":
        phi = 2.0 * t * kc
    elif kernel in ("matern12", "laplacian"):
        phi = t * kc
    else:
        matern32 = kid == KERNEL_IDS["matern32"]
        a = t + torch.sqrt((2.0 if matern32 else 6.0) * t)
        for _ in range(5 if k.dtype == torch.float64 else 4):
            p = 1.0 + a if matern32 else 1.0 + a + a * a / 3.0
            slope = a / p if matern32 else a * (1.0 + a) / (3.0 * p)
            step = (a - torch.log(p) - t) / torch.where(a > 0, slope, 1.0)
            a = torch.where(a > 0, a - step, a)
        if matern32:
            phi = kc * a * a / (1.0 + a)
        else:
            phi = kc * (a * a / 3.0) * (1.0 + a) / (1.0 + a + a * a / 3.0)
    return torch.where(live, phi, torch.zeros_like(phi))


def kernel_at_zero() -> float:
    """k(0) for every kernel here: the exact diagonal of K(X, X)."""
    return 1.0
