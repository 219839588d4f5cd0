"""``gram``: kernel Gram matrices K[i, j] = k(x_i, y_j), on three backends, with autograd.

Layout of this module: the backend adapters (C++ through NumPy buffers; Triton kernels live
in :mod:`fastamort.ops._triton_gram` because they share device code with ``gram_matmul``),
the pure-PyTorch reference :func:`gram_ref`, the autograd function, and the public op.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .._backends import cpp_module, note_backend, resolve_backend, triton_module
from .._checks import (
    batch_shape,
    check_lengthscale,
    check_points,
    check_same_kind,
    check_tensor,
    flatten_batch,
)
from .kernel_math import KERNEL_NAMES, is_euclidean, kernel_from_s, kernel_id

__all__ = ["gram", "gram_ref"]


# --------------------------------------------------------------------------------------
# Backend adapters: every backend exposes gram_forward, gram_matmul_forward, gram_backward
# on batched (B, ·, ·) contiguous tensors, with the lengthscale as a 0-d tensor.
# --------------------------------------------------------------------------------------
def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().contiguous().numpy()


def _cpp_gram_forward(x, y, kid: int, ell: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(cpp_module().gram_forward(_np(x), _np(y), kid, float(ell)))


def _cpp_gram_matmul_forward(x, y, v, kid: int, ell: torch.Tensor) -> torch.Tensor:
    out = cpp_module().gram_matmul_forward(_np(x), _np(y), _np(v), kid, float(ell))
    return torch.from_numpy(out)


def _cpp_gram_backward(x, y, grad, v, kid: int, ell: torch.Tensor):
    dx, dy, dell = cpp_module().gram_backward(_np(x), _np(y), _np(grad), _np(v), kid, float(ell))
    dy_t = None if dy is None else torch.from_numpy(dy)
    return torch.from_numpy(dx), dy_t, torch.tensor(float(dell.sum()), dtype=ell.dtype)


_CPP = SimpleNamespace(
    gram_forward=_cpp_gram_forward,
    gram_matmul_forward=_cpp_gram_matmul_forward,
    gram_backward=_cpp_gram_backward,
)


def gram_backend_impl(backend: str) -> SimpleNamespace:
    """The kernels of one compiled backend ("cpp" or "triton")."""
    if backend == "cpp":
        return _CPP
    return triton_module("fastamort.ops._triton_gram")  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------
def scaled_distance_ref(
    x: torch.Tensor, y: torch.Tensor | None, kernel: str, lengthscale: torch.Tensor | float
) -> torch.Tensor:
    """s(x_i, y_j): ‖x−y‖²/ℓ² (Euclidean kernels) or ‖x−y‖₁/ℓ (Laplacian), (..., M, N).

    Euclidean distances by the GEMM trick on centred points, clamped at 0; with ``y`` None
    the result is exactly symmetric with an exactly zero diagonal.
    """
    other = x if y is None else y
    # × 1/ℓ rather than ÷ ℓ (or ℓ²): the ℓ-gradient of a ÷ at the smallest lengthscales goes
    # through 1/ℓ³ or 1/ℓ⁴, which overflow (then ∞·0 = NaN where k is flat).
    inv_ell = 1.0 / lengthscale
    if kernel == "laplacian":
        s = torch.cdist(x, other, p=1) * inv_ell
    else:
        m, n = x.shape[-2], other.shape[-2]
        if y is None:
            centre = x.mean(dim=-2, keepdim=True)
        else:
            centre = (x.sum(dim=-2, keepdim=True) + other.sum(dim=-2, keepdim=True)) / max(m + n, 1)
        xc, yc = x - centre, other - centre
        sq = xc.pow(2).sum(-1).unsqueeze(-1) + yc.pow(2).sum(-1).unsqueeze(-2) - 2.0 * (xc @ yc.mT)
        s = sq.clamp_min(0.0) * inv_ell * inv_ell
    if y is None:
        s = 0.5 * (s + s.mT)
        s = s * (1.0 - torch.eye(s.shape[-1], dtype=s.dtype, device=s.device))
    return s


def gram_ref(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    kernel: str = "gaussian",
    lengthscale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Pure-PyTorch Gram matrix k(x_i, y_j), (..., M, D) × (..., N, D) → (..., M, N).

    Differentiable by autograd; shared by the ``torch`` backend, the tests and the benchmarks.
    """
    return kernel_from_s(scaled_distance_ref(x, y, kernel, lengthscale), kernel)


# --------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------
class GramFunction(torch.autograd.Function):
    """K = gram(x, y) on a compiled backend; backward by that backend's own kernels."""

    @staticmethod
    def forward(ctx, x, y, ell, kid: int, backend: str):  # type: ignore[override]
        impl = gram_backend_impl(backend)
        k = impl.gram_forward(x, y, kid, ell)
        note_backend("gram", backend)
        ctx.save_for_backward(x, y, ell)
        ctx.kid, ctx.backend = kid, backend
        return k

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_k):  # type: ignore[override]
        x, y, ell = ctx.saved_tensors
        impl = gram_backend_impl(ctx.backend)
        dx, dy, dell = impl.gram_backward(x, y, grad_k.contiguous(), None, ctx.kid, ell)
        note_backend("gram.backward", ctx.backend)
        return dx, dy, dell.to(ell.dtype).reshape(ell.shape), None, None


# --------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------
def prepare_points(
    x: object, y: object, kernel: str, lengthscale: object, names: tuple[str, str] = ("x", "y")
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """Validates x (…, M, D), optional y (…, N, D), kernel and lengthscale; errors call x and y
    by ``names``."""
    kid = kernel_id(kernel)
    xn, yn = names
    x = check_tensor(x, xn, min_ndim=2)
    if y is not None:
        y = check_tensor(y, yn, min_ndim=2)
        check_same_kind([(xn, x), (yn, y)])
        if y.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"{yn}: feature dimension {y.shape[-1]} differs from {xn}'s {x.shape[-1]} "
                f"({xn} {tuple(x.shape)}, {yn} {tuple(y.shape)})"
            )
    ell = check_lengthscale(lengthscale, x)
    check_points((xn, x), *([] if y is None else [(yn, y)]), squared=is_euclidean(kernel))
    return x, y, ell, kid


def gram(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    kernel: str = "gaussian",
    lengthscale: float | torch.Tensor = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Kernel Gram matrix ``K[..., i, j] = k(x[..., i, :], y[..., j, :])``.

    Args:
        x: points, shape ``(..., M, D)``, float32 or float64.
        y: points, shape ``(..., N, D)``; ``None`` means ``y = x``, and then ``K`` is exactly
            symmetric with an exact unit diagonal. Leading batch dimensions broadcast.
        kernel: one of ``"gaussian"``, ``"matern12"``, ``"matern32"``, ``"matern52"``,
            ``"laplacian"`` (see :mod:`fastamort.ops.kernel_math`).
        lengthscale: positive float, or 0-d tensor (gradients flow to it if it requires grad).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        ``K`` of shape ``(..., M, N)``, same dtype and device as ``x``.

    Example:
        >>> import torch, fastamort
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> fastamort.gram(x, lengthscale=1.0)
        tensor([[1.0000, 0.6065],
                [0.6065, 1.0000]])
    """
    x, y, ell, kid = prepare_points(x, y, kernel, lengthscale)
    name = resolve_backend("gram", backend, x.device)
    other = x if y is None else y
    batch = batch_shape(x.shape[:-2], other.shape[:-2], names=("x", "y"))
    m, n = x.shape[-2], other.shape[-2]
    if name == "torch" or m == 0 or n == 0 or x.shape[-1] == 0 or batch.numel() == 0:
        k = gram_ref(x, y, kernel, ell)
        if name == "torch":
            note_backend("gram", "torch")
        return k.expand(*batch, m, n) if k.shape[:-2] != batch else k
    x3 = flatten_batch(x, batch)
    y3 = None if y is None else flatten_batch(y, batch)
    k = GramFunction.apply(x3, y3, ell, kid, name)
    return k.reshape(*batch, m, n)


KERNELS = KERNEL_NAMES
