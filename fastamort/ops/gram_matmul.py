"""``gram_matmul``: K(x, y) @ v without storing the M×N Gram matrix, with autograd.

The compiled backends walk K in tiles and multiply each tile by its slice of ``v`` while it
is in cache (C++) or in registers (Triton). The backward pass needs no K either:
dv = K(y, x) @ g is another fused product, and the gradients for x, y and ℓ contract the
tile-wise G = g·vᵀ with dk/ds inside the same tiled loop.
"""

from __future__ import annotations

import torch

from .._backends import backend_impl, note_backend, resolve_backend
from .._checks import (
    as_columns,
    batch_shape,
    check_finite,
    check_same_kind,
    check_tensor,
    flatten_batch,
)
from ._library import none_if_empty, register_batch_vmap, traced
from .gram import (
    check_point_values,
    compiled_gram_grads,
    double_backward,
    gram_backward_op,
    gram_ref,
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
        out = backend_impl("gram", backend).gram_matmul_forward(x, y, v, kid, ell)
        note_backend("gram_matmul", backend)
        ctx.save_for_backward(x, y, v, ell)
        ctx.kid, ctx.backend = kid, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, y, v, ell = ctx.saved_tensors
        needed = tuple(ctx.needs_input_grad[:4])
        if wants_double_backward(x, y, v, ell, grad_out):
            return (*double_backward(x, y, v, ell, ctx.kid, needed, grad_out), None, None)
        impl = backend_impl("gram", ctx.backend)
        dx, dy, dv, dell = compiled_gram_grads(
            impl, x, y, None, grad_out.contiguous(), v, ctx.kid, ell, needed
        )
        note_backend("gram_matmul.backward", ctx.backend)
        return dx, dy, dv, dell, None, None


# --------------------------------------------------------------------------------------
# Registered op fastamort::gram_matmul (see fastamort.ops._library); its backward is
# fastamort::gram_backward. Inputs batched (B, ·, ·); value checks in the body.
# --------------------------------------------------------------------------------------
@torch.library.custom_op("fastamort::gram_matmul", mutates_args=())
def gram_matmul_op(
    x: torch.Tensor,
    y: torch.Tensor | None,
    v: torch.Tensor,
    ell: torch.Tensor,
    kid: int,
    backend: str,
) -> torch.Tensor:
    """K(x, y) @ v (B, M, P) for x (B, M, D), y (B, N, D) or None, v (B, N, P)."""
    check_point_values(x, y, ell, kid)
    check_finite((v, "v"))
    other = x if y is None else y
    if (
        backend == "torch"
        or min(x.shape[0], x.shape[1], other.shape[1], x.shape[2], v.shape[2]) == 0
    ):
        out = gram_matmul_ref(x, y, v, KERNEL_NAMES[kid], ell)
        if backend == "torch":
            note_backend("gram_matmul", "torch")
        return out
    out = backend_impl("gram", backend).gram_matmul_forward(x, y, v, kid, ell)
    note_backend("gram_matmul", backend)
    return out


@gram_matmul_op.register_fake
def _(x, y, v, ell, kid, backend):
    return x.new_empty(x.shape[0], x.shape[1], v.shape[2])


def _setup(ctx, inputs, output):
    x, y, v, ell, kid, backend = inputs
    ctx.save_for_backward(x, y, v, ell)
    ctx.kid, ctx.backend = kid, backend


def _backward(ctx, grad_out):
    x, y, v, ell = ctx.saved_tensors
    need_x, need_y, need_v, need_ell = needed = tuple(ctx.needs_input_grad[:4])
    if wants_double_backward(x, y, v, ell, grad_out):
        return (*double_backward(x, y, v, ell, ctx.kid, needed, grad_out), None, None)
    grads = gram_backward_op(
        x, y, None, grad_out.contiguous(), v, ell, ctx.kid, *needed, ctx.backend
    )
    wanted = (need_x, need_y and y is not None, need_v, need_ell)
    return (*(none_if_empty(g, w) for g, w in zip(grads, wanted, strict=True)), None, None)


gram_matmul_op.register_autograd(_backward, setup_context=_setup)
register_batch_vmap(gram_matmul_op, leading=(0, 1, 2))


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
    eager = not traced()
    x, y, ell, kid = prepare_points(x, y, kernel, lengthscale, values=eager)
    v = check_tensor(v, "v", min_ndim=1)
    check_same_kind([(x, "x"), (v, "v")])
    if eager:
        check_finite((v, "v"))
    other = x if y is None else y
    v2, vector = as_columns(v, "v", other.shape[-2], (x, "x"))
    name = resolve_backend("gram_matmul", backend, x.device)
    batch = batch_shape(x.shape[:-2], other.shape[:-2], v2.shape[:-2], names=("x", "y", "v"))
    m, n, p = x.shape[-2], other.shape[-2], v2.shape[-1]
    if not eager:
        x3, v3 = flatten_batch(x, batch), flatten_batch(v2, batch)
        y3 = None if y is None else flatten_batch(y, batch)
        out = gram_matmul_op(x3, y3, v3, ell, kid, name).reshape(*batch, m, p)
    elif name == "torch" or min(m, n, p, x.shape[-1]) == 0 or batch.numel() == 0:
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
