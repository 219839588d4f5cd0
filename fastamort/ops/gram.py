"""``gram``: kernel Gram matrices K[i, j] = k(x_i, y_j), on three backends, with autograd.

Layout of this module: the backend adapters (C++ through NumPy buffers; Triton kernels live
in :mod:`fastamort.ops._triton_gram` because they share device code with ``gram_matmul``),
the pure-PyTorch reference :func:`gram_ref`, the autograd function, and the public op.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from .._backends import cpp_module, note_backend, resolve_backend, triton_module
from .._checks import (
    batch_shape,
    check_lengthscale,
    check_points,
    check_same_kind,
    check_tensor,
    flatten_batch,
    has_data,
)
from .kernel_math import DIRECT_RATIO, KERNEL_NAMES, is_euclidean, kernel_from_s, kernel_id

__all__ = ["gram", "gram_ref"]


# --------------------------------------------------------------------------------------
# Backend adapters: every backend exposes, on batched (B, ·, ·) tensors with the lengthscale
# as a 0-d tensor,
#   gram_forward(x, y, kid, ell) -> K,  gram_matmul_forward(x, y, v, kid, ell) -> K·v,
#   gram_backward(x, y, grad, v, kid, ell, need_x, need_y) -> (dx | None, dy | None, dell):
#       gradients of sum(G * K), G = grad or grad·vᵀ; only the point gradients asked for;
#   gram_ell_grad(k, grad, kid, ell) -> dell from K itself (no distances).
# --------------------------------------------------------------------------------------
def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().resolve_neg().contiguous().numpy()


def _cpp_gram_forward(x, y, kid: int, ell: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(cpp_module().gram_forward(_np(x), _np(y), kid, float(ell)))


def _cpp_gram_matmul_forward(x, y, v, kid: int, ell: torch.Tensor) -> torch.Tensor:
    out = cpp_module().gram_matmul_forward(_np(x), _np(y), _np(v), kid, float(ell))
    return torch.from_numpy(out)


def _cpp_gram_backward(x, y, grad, v, kid: int, ell: torch.Tensor, need_x=True, need_y=True):
    dx, dy, dell = cpp_module().gram_backward(
        _np(x), _np(y), _np(grad), _np(v), kid, float(ell), need_x, need_y
    )
    dx_t = None if dx is None else torch.from_numpy(dx)
    dy_t = None if dy is None else torch.from_numpy(dy)
    return dx_t, dy_t, torch.tensor(float(dell.sum()), dtype=ell.dtype)


def _cpp_gram_ell_grad(k, grad, kid: int, ell: torch.Tensor) -> torch.Tensor:
    dell = cpp_module().gram_ell_grad(_np(k), _np(grad), kid, float(ell))
    return torch.tensor(float(dell.sum()), dtype=ell.dtype)


_CPP = SimpleNamespace(
    gram_forward=_cpp_gram_forward,
    gram_matmul_forward=_cpp_gram_matmul_forward,
    gram_backward=_cpp_gram_backward,
    gram_ell_grad=_cpp_gram_ell_grad,
)


def gram_backend_impl(backend: str) -> SimpleNamespace:
    """The kernels of one compiled backend ("cpp" or "triton")."""
    if backend == "cpp":
        return _CPP
    return triton_module("fastamort.ops._triton_gram")  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------
#: D at or below which the reference forms squared distances directly, one coordinate at a time
#: (as the C++ engine's direct route): the GEMM trick saves nothing there.
DIRECT_MAX_D = 4
#: Points sampled (evenly strided) for the robust centre.
CENTRE_SAMPLE = 63


def robust_centre(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-coordinate median of an evenly strided sample of at most ``CENTRE_SAMPLE`` points of
    ``x`` (…, M, D) and ``y`` (…, N, D), (…, 1, D), detached: a centre for the GEMM trick that
    outliers cannot drag away (zeros if there are no points). The C++ engine samples alike."""
    with torch.no_grad():
        pts = x.detach()
        if y is not None:
            batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
            pts = torch.cat(
                [pts.expand(*batch, *x.shape[-2:]), y.detach().expand(*batch, *y.shape[-2:])], -2
            )
        total = pts.shape[-2]
        if total == 0:
            return torch.zeros_like(pts[..., :1, :])
        count = min(total, CENTRE_SAMPLE)
        rows = torch.arange(count, device=pts.device) * total // count
        return pts.index_select(-2, rows).median(dim=-2, keepdim=True).values


def squared_distance_ref(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """‖x_i − y_j‖² (…, M, N), differentiable (twice), as accurate as direct differences.

    D <= ``DIRECT_MAX_D``: Σ_d (x_d − y_d)², one coordinate at a time. Otherwise the GEMM trick
    q = ‖x̃‖² + ‖ỹ‖² − 2 x̃·ỹ on points centred at :func:`robust_centre`, clamped at 0, and the
    entries with ‖x̃‖² + ‖ỹ‖² > ``DIRECT_RATIO``·q, whose digits it may have lost, recomputed as
    Σ (x − y)² of the raw points (only they cost O(D) memory each).
    """
    other = x if y is None else y
    if x.shape[-1] <= DIRECT_MAX_D:
        batch = torch.broadcast_shapes(x.shape[:-2], other.shape[:-2])
        sq = x.new_zeros(*batch, x.shape[-2], other.shape[-2])
        for k in range(x.shape[-1]):
            diff = x[..., :, None, k] - other[..., None, :, k]
            sq = sq + diff * diff
        return sq
    centre = robust_centre(x, y)
    xc = x - centre
    yc = xc if y is None else other - centre
    nx = xc.pow(2).sum(-1)
    ny = nx if y is None else yc.pow(2).sum(-1)
    e = nx.unsqueeze(-1) + ny.unsqueeze(-2)
    cross = torch.matmul(xc, yc.mT)
    if y is None:  # a point against itself: q = e is never recomputed, and its sq is set to 0
        cross.diagonal(dim1=-2, dim2=-1).zero_()
    q = cross.mul_(-2.0).add_(e)
    sq = q.clamp_min(0.0)
    if y is None:
        sq.diagonal(dim1=-2, dim2=-1).zero_()
    if q.numel() == 0 or not has_data(q):
        return sq
    with torch.no_grad():
        # cheap test first: no row's smallest q is below its largest possible norms / ratio
        bound = nx.detach() + ny.detach().amax(-1, keepdim=True)
        suspect = bool((DIRECT_RATIO * q.detach().amin(-1) < bound).any())
        redo = (DIRECT_RATIO * q.detach() < e.detach()) if suspect else None
    if redo is None or not bool(redo.any()):
        return sq
    idx = redo.nonzero(as_tuple=True)
    batch = q.shape[:-2]
    xb = x.expand(*batch, *x.shape[-2:])
    ob = other.expand(*batch, *other.shape[-2:])
    direct = (xb[idx[:-1]] - ob[(*idx[:-2], idx[-1])]).pow(2).sum(-1)
    return sq.index_put(idx, direct)


def l1_distance_ref(x: torch.Tensor, y: torch.Tensor | None, twice: bool = False) -> torch.Tensor:
    """‖x_i − y_j‖₁ (…, M, N) by ``torch.cdist``; ``twice``: one coordinate at a time instead,
    which autograd can differentiate twice (cdist's backward cannot be differentiated)."""
    other = x if y is None else y
    if not twice:
        return torch.cdist(x, other, p=1)
    batch = torch.broadcast_shapes(x.shape[:-2], other.shape[:-2])
    total = x.new_zeros(*batch, x.shape[-2], other.shape[-2])
    for k in range(x.shape[-1]):
        total = total + (x[..., :, None, k] - other[..., None, :, k]).abs()
    return total


def scaled_distance_ref(
    x: torch.Tensor,
    y: torch.Tensor | None,
    kernel: str,
    lengthscale: torch.Tensor | float,
    twice_differentiable: bool = False,
) -> torch.Tensor:
    """s(x_i, y_j): ‖x−y‖²/ℓ² (Euclidean kernels) or ‖x−y‖₁/ℓ (Laplacian), (..., M, N).

    Euclidean distances by :func:`squared_distance_ref`, L1 ones by :func:`l1_distance_ref`
    (``twice_differentiable``: its slower form that autograd differentiates twice); with ``y``
    None the result is exactly symmetric with an exactly zero diagonal.
    """
    # × 1/ℓ rather than ÷ ℓ (or ℓ²): the ℓ-gradient of a ÷ at the smallest lengthscales goes
    # through 1/ℓ³ or 1/ℓ⁴, which overflow (then ∞·0 = NaN where k is flat).
    inv_ell = 1.0 / lengthscale
    if kernel == "laplacian":
        s = l1_distance_ref(x, y, twice_differentiable) * inv_ell
    else:
        s = squared_distance_ref(x, y) * inv_ell * inv_ell
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
    Twice differentiable too, except for the Laplacian (``torch.cdist``): see
    :func:`gram_twice_differentiable`.
    """
    return kernel_from_s(scaled_distance_ref(x, y, kernel, lengthscale), kernel)


def gram_twice_differentiable(
    x: torch.Tensor, y: torch.Tensor | None, kernel: str, lengthscale: torch.Tensor | float
) -> torch.Tensor:
    """:func:`gram_ref` in a form autograd can differentiate twice for every kernel (the
    backward of the compiled backends under ``create_graph=True``)."""
    return kernel_from_s(scaled_distance_ref(x, y, kernel, lengthscale, True), kernel)


# --------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------
def differentiable_grads(
    ref: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor | None, ...],
    needed: tuple[bool, ...],
    grad_out: torch.Tensor,
) -> list[torch.Tensor | None]:
    """Gradients of ``sum(grad_out * ref(*inputs))`` for the ``needed`` inputs, as a graph that
    can itself be differentiated: a compiled backward under ``create_graph=True``."""
    wanted = [t for t, need in zip(inputs, needed, strict=True) if need and t is not None]
    with torch.enable_grad():
        out = ref(*inputs)
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = []
    for t, need in zip(inputs, needed, strict=True):
        g = next(grads) if need and t is not None else None
        if g is None and need and t is not None:
            g = torch.zeros_like(t)
        result.append(g)
    return result


def wants_double_backward(*tensors: torch.Tensor | None) -> bool:
    """In a backward: whether it runs under ``create_graph=True`` with something to
    differentiate, so that its result must itself carry a graph."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class GramFunction(torch.autograd.Function):
    """K = gram(x, y) on a compiled backend; backward by that backend's own kernels.

    Only the gradients asked for are formed: a lengthscale-only backward reads ℓ·∂k/∂ℓ off the
    K the forward returned (saved for it), with no distances at all. Under
    ``create_graph=True`` the backward runs :func:`gram_twice_differentiable`'s, which can be
    differentiated again (second derivatives).
    """

    @staticmethod
    def forward(ctx, x, y, ell, kid: int, backend: str):  # type: ignore[override]
        impl = gram_backend_impl(backend)
        k = impl.gram_forward(x, y, kid, ell)
        note_backend("gram", backend)
        need_x, need_y, need_ell = ctx.needs_input_grad[:3]
        keep_k = need_ell and not (need_x or need_y)
        ctx.save_for_backward(x, y, ell, k if keep_k else None)
        ctx.kid, ctx.backend = kid, backend
        return k

    @staticmethod
    def backward(ctx, grad_k):  # type: ignore[override]
        x, y, ell, k = ctx.saved_tensors
        needed = tuple(ctx.needs_input_grad[:3])
        if wants_double_backward(x, y, ell, grad_k):
            kernel = KERNEL_NAMES[ctx.kid]
            grads = differentiable_grads(
                lambda a, b, e: gram_twice_differentiable(a, b, kernel, e),
                (x, y, ell),
                needed,
                grad_k,
            )
            note_backend("gram.backward", "torch")
            return (*grads, None, None)
        need_x, need_y, need_ell = needed
        impl = gram_backend_impl(ctx.backend)
        grad_k = grad_k.contiguous()
        dx = dy = dell = None
        if need_x or (need_y and y is not None):
            dx, dy, dell = impl.gram_backward(
                x, y, grad_k, None, ctx.kid, ell, need_x, need_y and y is not None
            )
        elif need_ell:
            dell = impl.gram_ell_grad(k, grad_k, ctx.kid, ell)
        note_backend("gram.backward", ctx.backend)
        if need_ell:
            dell = dell.to(ell.dtype).reshape(ell.shape)
        return dx, dy, dell if need_ell else None, None, None


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
