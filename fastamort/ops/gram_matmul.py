"""``gram_matmul``: K(x, y) @ v without storing the M×N Gram matrix, with autograd.

The compiled backends walk K in tiles and multiply each tile by its slice of ``v`` while it
is in cache (C++) or in registers (Triton). The backward pass needs no K either:
dv = K(y, x) @ g is another fused product, and the gradients for x, y and ℓ contract the
tile-wise G = g·vᵀ with dk/ds inside the same tiled loop.
"""

from __future__ import annotations

import torch

from .._backends import note_backend, resolve_backend
from .._checks import (
    as_columns,
    batch_shape,
    check_finite,
    check_same_kind,
    check_tensor,
    flatten_batch,
)
from .gram import (
    differentiable_grads,
    gram_backend_impl,
    gram_ref,
    gram_twice_differentiable,
    prepare_points,
    wants_double_backward,
)
from .kernel_math import KERNEL_NAMES

__all__ = ["gram_matmul", "gram_matmul_ref"]


def gram_matmul_ref(
    x: torch.Tensor,
    y: torch.Tensor | None,
    v: torch.Tensor,
    kernel: str = "gaussian",
    lengthscale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Pure-PyTorch reference: materialise ``gram_ref(x, y)`` then multiply by ``v``."""
    return gram_ref(x, y, kernel, lengthscale) @ v


class GramMatmulFunction(torch.autograd.Function):
    """out = K(x, y) @ v on a compiled backend; backward by that backend's fused kernels.

    Only the gradients asked for are formed (no contraction with the points when only ℓ and v
    need theirs). Under ``create_graph=True`` the backward runs the torch formulas of
    :func:`~fastamort.ops.gram.gram_twice_differentiable`, which can be differentiated again.
    """

    @staticmethod
    def forward(ctx, x, y, v, ell, kid: int, backend: str):  # type: ignore[override]
        impl = gram_backend_impl(backend)
        out = impl.gram_matmul_forward(x, y, v, kid, ell)
        note_backend("gram_matmul", backend)
        ctx.save_for_backward(x, y, v, ell)
        ctx.kid, ctx.backend = kid, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, y, v, ell = ctx.saved_tensors
        needed = tuple(ctx.needs_input_grad[:4])
        if wants_double_backward(x, y, v, ell, grad_out):
            kernel = KERNEL_NAMES[ctx.kid]
            grads = differentiable_grads(
                lambda a, b, w, e: gram_twice_differentiable(a, b, kernel, e) @ w,
                (x, y, v, ell),
                needed,
                grad_out,
            )
            note_backend("gram_matmul.backward", "torch")
            return (*grads, None, None)
        need_x, need_y, need_v, need_ell = needed
        need_y = need_y and y is not None
        impl = gram_backend_impl(ctx.backend)
        g = grad_out.contiguous()
        dv = None
        if need_v:  # K(x, y)ᵀ = K(y, x) for these symmetric kernels
            dv = impl.gram_matmul_forward(
                x if y is None else y, None if y is None else x, g, ctx.kid, ell
            )
        dx = dy = dell = None
        if need_x or need_y or need_ell:
            dx, dy, dell = impl.gram_backward(x, y, g, v, ctx.kid, ell, need_x, need_y)
            dell = dell.to(ell.dtype).reshape(ell.shape) if need_ell else None
        note_backend("gram_matmul.backward", ctx.backend)
        return dx, dy, dv, dell, None, None


def gram_matmul(
    x: torch.Tensor,
    y: torch.Tensor | None,
    v: torch.Tensor,
    *,
    kernel: str = "gaussian",
    lengthscale: float | torch.Tensor = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """``gram(x, y, kernel=..., lengthscale=...) @ v`` computed in tiles.

    Args:
        x: points, shape ``(..., M, D)``, float32 or float64.
        y: points, shape ``(..., N, D)``, or ``None`` for ``y = x``.
        v: shape ``(..., N, P)``, or ``(..., N)`` when ``v.ndim == x.ndim - 1``.
        kernel, lengthscale, backend: as for :func:`fastamort.gram`.

    Returns:
        shape ``(..., M, P)`` (or ``(..., M)`` for a vector ``v``). The M×N Gram matrix is
        never stored on the ``cpp`` and ``triton`` backends (forward and backward).

    Example:
        >>> import torch, fastamort
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> fastamort.gram_matmul(x, None, torch.ones(2))
        tensor([1.6065, 1.6065])
    """
    x, y, ell, kid = prepare_points(x, y, kernel, lengthscale)
    v = check_tensor(v, "v", min_ndim=1)
    check_same_kind([("x", x), ("v", v)])
    check_finite(("v", v))
    other = x if y is None else y
    v2, vector = as_columns(v, "v", other.shape[-2], ("x", x))
    name = resolve_backend("gram_matmul", backend, x.device)
    batch = batch_shape(x.shape[:-2], other.shape[:-2], v2.shape[:-2], names=("x", "y", "v"))
    m, n, p = x.shape[-2], other.shape[-2], v2.shape[-1]
    if name == "torch" or min(m, n, p, x.shape[-1]) == 0 or batch.numel() == 0:
        out = gram_matmul_ref(x, y, v2, kernel, ell)
        if name == "torch":
            note_backend("gram_matmul", "torch")
        out = out.expand(*batch, m, p)
    else:
        x3 = flatten_batch(x, batch)
        y3 = None if y is None else flatten_batch(y, batch)
        v3 = flatten_batch(v2, batch)
        out = GramMatmulFunction.apply(x3, y3, v3, ell, kid, name).reshape(*batch, m, p)
    return out.squeeze(-1) if vector else out
