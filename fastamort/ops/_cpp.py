"""The C++ backend: every adapter of the extension ``fastamort._C``, on NumPy buffers.

Implements :class:`fastamort._backends.GramBackend` and :class:`fastamort._backends.RidgeBackend`
(the same names and contracts as :mod:`fastamort.ops._triton_gram` and
:mod:`fastamort.ops._triton_ridge`) on CPU tensors, plus the extension's own routes
(:func:`cholesky_narrowed`, :func:`nystrom_normal_matmul`). Inputs are batched (B, ·, ·)
tensors; the extension reads them as contiguous NumPy views, without a copy where possible.
"""

from __future__ import annotations

import numpy as np
import torch

from .._backends import cpp_module
from ._torch import symmetric_rank2k as _torch_symmetric_rank2k

__all__ = [
    "buffer_cache_info",
    "cholesky_narrowed",
    "empty_buffer_cache",
    "factor",
    "gram_backward",
    "gram_ell_grad",
    "gram_forward",
    "gram_matmul_forward",
    "kernel_ridge_batched",
    "nystrom_normal_matmul",
    "ridge",
    "solve",
]


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A contiguous NumPy view of ``t`` (negative bit resolved, gradient detached), or None."""
    return None if t is None else t.detach().resolve_neg().contiguous().numpy()


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(a)


def buffer_cache_info() -> dict[str, int]:
    """The extension's buffer pool: ``cached_bytes`` (freed buffers kept for reuse),
    ``live_bytes`` (pooled buffers in use), ``limit_bytes`` (the cache's cap,
    ``FASTAMORT_BUFFER_CACHE_MB`` MiB, default 256, 0 = no cache), ``hits`` and ``misses``
    (requests served from the cache, or freshly mapped). Buffers of 1 MiB and more (Gram
    matrices, factors, workspaces) are pooled, so that a repeated learner step maps no new
    memory pages."""
    return dict(cpp_module().buffer_cache_info())


def empty_buffer_cache() -> None:
    """Returns the extension's cached buffers to the system (those in use are kept)."""
    cpp_module().empty_buffer_cache()


# --------------------------------------------------------------------------------------
# Gram (GramBackend)
# --------------------------------------------------------------------------------------
def gram_forward(x, y, kid: int, ell: torch.Tensor) -> torch.Tensor:
    """K (B, M, N) of x (B, M, D), y (B, N, D) or None (y = x)."""
    return torch.from_numpy(cpp_module().gram_forward(_np(x), _np(y), kid, float(ell)))


def gram_matmul_forward(x, y, v, kid: int, ell: torch.Tensor) -> torch.Tensor:
    """K(x, y) @ v (B, M, P) for v (B, N, P), K never stored."""
    return torch.from_numpy(
        cpp_module().gram_matmul_forward(_np(x), _np(y), _np(v), kid, float(ell))
    )


def gram_backward(x, y, grad, v, kid: int, ell: torch.Tensor, need_x=True, need_y=True):
    """(dx | None, dy | None, dℓ 0-d) of sum(G ∘ K), G = grad (v None) or grad·vᵀ."""
    dx, dy, dell = cpp_module().gram_backward(
        _np(x), _np(y), _np(grad), _np(v), kid, float(ell), need_x, need_y
    )
    return _tensor(dx), _tensor(dy), torch.tensor(float(dell.sum()), dtype=ell.dtype)


def gram_ell_grad(k, grad, kid: int, ell: torch.Tensor) -> torch.Tensor:
    """dℓ (0-d) of sum(grad ∘ K) read off K itself (no distances)."""
    dell = cpp_module().gram_ell_grad(_np(k), _np(grad), kid, float(ell))
    return torch.tensor(float(dell.sum()), dtype=ell.dtype)


# --------------------------------------------------------------------------------------
# Cholesky and ridge (RidgeBackend)
# --------------------------------------------------------------------------------------
def factor(a, shift) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, info (B,) int64) with L Lᵀ = a + shift·I, shift (B,); info > 0 marks failures."""
    lower, info = cpp_module().cholesky_forward(_np(a), _np(shift.double()))
    return torch.from_numpy(lower), torch.from_numpy(info).long()


def solve(lower, b) -> torch.Tensor:
    """x (B, n, p) with L Lᵀ x = b."""
    return torch.from_numpy(cpp_module().cholesky_solve(_np(lower), _np(b)))


#: Order from which the C++ symmetric product (lower blocks only, threaded over block pairs)
#: replaces the torch GEMM: below it the product is one block, a single-threaded GEMM.
SYMMETRIC_RANK2K_MIN_N = 512


def symmetric_rank2k(a, b, alpha: float) -> torch.Tensor:
    """alpha·(a bᵀ + b aᵀ) (B, n, n) for a, b (B, n, p): for n ≥ ``SYMMETRIC_RANK2K_MIN_N``
    the lower blocks only (half the flops), mirrored; below, the torch reference's GEMM."""
    if a.shape[-2] < SYMMETRIC_RANK2K_MIN_N:
        return _torch_symmetric_rank2k(a, b, alpha)
    return torch.from_numpy(cpp_module().symmetric_rank2k(_np(a), _np(b), float(alpha)))


def ridge(k, b, shift, keep_lower: bool = True, check_finite: bool = False):
    """(x, L | None, info) for (k + shift·I) x = b. ``keep_lower=False``: the factor is not
    written (None); ``check_finite``: the kernel raises ``ValueError`` naming k or b itself
    when they hold NaN or infinity."""
    x, lower, info = cpp_module().ridge_solve_forward(
        _np(k), _np(b), _np(shift.double()), keep_lower, check_finite
    )
    return torch.from_numpy(x), _tensor(lower), torch.from_numpy(info).long()


def kernel_ridge_batched(x, y, shift, kid: int, ell, x_new, check_finite: bool = False):
    """(alpha (B, n, p), prediction (B, m, p) | None, info (B,)) of fused kernel ridge fits;
    ``check_finite``: the kernel refuses a non-finite y itself."""
    alpha, pred, info = cpp_module().kernel_ridge_batched(
        _np(x), _np(y), _np(shift.double()), kid, float(ell), _np(x_new), check_finite
    )
    return torch.from_numpy(alpha), _tensor(pred), torch.from_numpy(info).long()


# --------------------------------------------------------------------------------------
# Routes of the extension alone
# --------------------------------------------------------------------------------------
def cholesky_narrowed(k: torch.Tensor, alpha: float) -> tuple[torch.Tensor, int, float]:
    """(float32 L of K + αI, info, ‖K‖_F²) for float64 K (n, n): narrowed while copied."""
    lower, info, frobenius_sq = cpp_module().cholesky_narrowed(_np(k), float(alpha))
    return torch.from_numpy(lower), info, frobenius_sq


def nystrom_normal_matmul(x, centres, v, y, w, kid: int, ell: float) -> torch.Tensor:
    """Kᵀ((K v + y) ∘ w) in float64 for K = k(x, centres), never stored (v, y, w optional)."""

    def np64(t):
        return None if t is None else _np(t.to(torch.float64))

    out = cpp_module().nystrom_normal_matmul(
        _np(x), _np(centres), np64(v), np64(y), np64(w), kid, ell
    )
    return torch.from_numpy(out)
