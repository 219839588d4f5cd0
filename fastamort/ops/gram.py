"""``gram``: kernel Gram matrices K[i, j] = k(x_i, y_j), on three backends, with autograd.

Layout of this module: the pure-PyTorch reference :func:`gram_ref`, the autograd function, and
the public op. The compiled backends' kernels are reached through
:func:`fastamort._backends.backend_impl` (``"gram"``: :mod:`fastamort.ops._cpp`,
:mod:`fastamort.ops._triton_gram`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._backends import GramBackend, backend_impl, note_backend, resolve_backend
from .._checks import (
    batch_shape,
    check_lengthscale,
    check_lengthscale_value,
    check_points,
    check_same_kind,
    check_tensor,
    flatten_batch,
    has_data,
)
from ._library import (
    autograd_inside_op,
    empty_like_none,
    none_if_empty,
    register_batch_vmap,
    register_loop_vmap,
    traced,
)
from .kernel_math import DIRECT_RATIO, KERNEL_NAMES, is_euclidean, kernel_from_s, kernel_id

__all__ = ["gram", "gram_ref"]


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


def compiled_gram_grads(
    impl: GramBackend,
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    grad: torch.Tensor,
    v: torch.Tensor | None,
    kid: int,
    ell: torch.Tensor,
    needed: tuple[bool, bool, bool, bool],
) -> tuple[torch.Tensor | None, ...]:
    """(dx, dy, dv, dℓ) of sum(grad ∘ out), out = K(x, y) (``v`` None) or K(x, y)·v, by a
    compiled backend's kernels; ``needed`` says which (None for the others).

    A lengthscale-only gradient of K reads ℓ·∂k/∂ℓ off ``k`` (the saved forward result) when it
    is given, with no distances; dv = K(y, x)·grad is another fused product.
    """
    need_x, need_y, need_v, need_ell = needed
    need_y = need_y and y is not None
    dv = dx = dy = dell = None
    if need_v:  # K(x, y)ᵀ = K(y, x) for these symmetric kernels
        dv = impl.gram_matmul_forward(
            x if y is None else y, None if y is None else x, grad, kid, ell
        )
    if need_x or need_y or (need_ell and (v is not None or k is None)):
        dx, dy, dell = impl.gram_backward(x, y, grad, v, kid, ell, need_x, need_y)
    elif need_ell:
        dell = impl.gram_ell_grad(k, grad, kid, ell)
    dell = dell.to(ell.dtype).reshape(ell.shape) if need_ell else None
    return dx, dy, dv, dell


class GramFunction(torch.autograd.Function):
    """K = gram(x, y) on a compiled backend; backward by that backend's own kernels.

    Only the gradients asked for are formed: a lengthscale-only backward reads ℓ·∂k/∂ℓ off the
    K the forward returned (saved for it), with no distances at all. Under
    ``create_graph=True`` the backward runs :func:`gram_twice_differentiable`'s, which can be
    differentiated again (second derivatives).
    """

    @staticmethod
    def forward(ctx, x, y, ell, kid: int, backend: str):  # type: ignore[override]
        k = backend_impl("gram", backend).gram_forward(x, y, kid, ell)
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
            return (*double_backward(x, y, None, ell, ctx.kid, needed, grad_k), None, None)
        need_x, need_y, need_ell = needed
        impl = backend_impl("gram", ctx.backend)
        dx, dy, _, dell = compiled_gram_grads(
            impl,
            x,
            y,
            k,
            grad_k.contiguous(),
            None,
            ctx.kid,
            ell,
            (need_x, need_y, False, need_ell),
        )
        note_backend("gram.backward", ctx.backend)
        return dx, dy, dell, None, None


def double_backward(x, y, v, ell, kid: int, needed: tuple[bool, ...], grad):
    """Gradients of sum(grad ∘ out) as a graph (``create_graph=True``): out = K(x, y), or
    K(x, y)·v when ``v`` is given (``needed`` then covers x, y, v, ℓ)."""
    kernel = KERNEL_NAMES[kid]
    if v is None:
        grads = differentiable_grads(
            lambda a, b, e: gram_twice_differentiable(a, b, kernel, e), (x, y, ell), needed, grad
        )
        note_backend("gram.backward", "torch")
    else:
        grads = differentiable_grads(
            lambda a, b, w, e: gram_twice_differentiable(a, b, kernel, e) @ w,
            (x, y, v, ell),
            needed,
            grad,
        )
        note_backend("gram_matmul.backward", "torch")
    return grads


# --------------------------------------------------------------------------------------
# Registered ops (torch.library, see fastamort.ops._library): fastamort::gram and the
# backward op it shares with fastamort::gram_matmul. Inputs are batched (B, ·, ·); the value
# checks of the points and the lengthscale run in the op bodies.
# --------------------------------------------------------------------------------------
def check_point_values(
    x: torch.Tensor, y: torch.Tensor | None, ell: torch.Tensor, kid: int
) -> None:
    """The checks of :func:`prepare_points` that read values (ℓ's range, finite points whose
    distances cannot overflow), with the same errors."""
    if has_data(ell):
        check_lengthscale_value(float(ell), x.dtype)
    check_points(
        (x, "x"), *([] if y is None else [(y, "y")]), squared=is_euclidean(KERNEL_NAMES[kid])
    )


def _is_empty(x: torch.Tensor, other: torch.Tensor, *cols: int) -> bool:
    return min(x.shape[0], x.shape[1], other.shape[1], x.shape[2], *cols) == 0


@torch.library.custom_op("fastamort::gram", mutates_args=())
def gram_op(
    x: torch.Tensor, y: torch.Tensor | None, ell: torch.Tensor, kid: int, backend: str
) -> torch.Tensor:
    """K (B, M, N) of x (B, M, D) and y (B, N, D) or None (y = x), on ``backend``."""
    check_point_values(x, y, ell, kid)
    if backend == "torch" or _is_empty(x, x if y is None else y):
        k = gram_ref(x, y, KERNEL_NAMES[kid], ell)
        if backend == "torch":
            note_backend("gram", "torch")
        return k
    k = backend_impl("gram", backend).gram_forward(x, y, kid, ell)
    note_backend("gram", backend)
    return k


@gram_op.register_fake
def _(x, y, ell, kid, backend):
    return x.new_empty(x.shape[0], x.shape[1], (x if y is None else y).shape[1])


@torch.library.custom_op("fastamort::gram_backward", mutates_args=())
def gram_backward_op(
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    grad: torch.Tensor,
    v: torch.Tensor | None,
    ell: torch.Tensor,
    kid: int,
    need_x: bool,
    need_y: bool,
    need_v: bool,
    need_ell: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy, dv, dℓ) of sum(grad ∘ out), out = K(x, y) (``v`` None) or K(x, y)·v; the
    gradients not asked for are empty tensors. ``k``: the saved K for an ℓ-only gradient."""
    needed = (need_x, need_y and y is not None, need_v and v is not None, need_ell)
    what = "gram.backward" if v is None else "gram_matmul.backward"
    other = x if y is None else y
    if backend == "torch" or _is_empty(x, other, *([] if v is None else [v.shape[2]])):
        grads = _torch_gram_grads(x, y, v, ell, kid, needed, grad)
        backend = "torch"
    else:
        impl = backend_impl("gram", backend)
        grads = compiled_gram_grads(impl, x, y, k, grad, v, kid, ell, needed)
    note_backend(what, backend)
    return tuple(empty_like_none(g, x) for g in grads)  # type: ignore[return-value]


@gram_backward_op.register_fake
def _(x, y, k, grad, v, ell, kid, need_x, need_y, need_v, need_ell, backend):
    shapes = (
        x.shape if need_x else (0,),
        y.shape if need_y and y is not None else (0,),
        v.shape if need_v and v is not None else (0,),
        ell.shape if need_ell else (0,),
    )
    return tuple(x.new_empty(shape) for shape in shapes)


def _torch_gram_grads(x, y, v, ell, kid, needed, grad):
    """:func:`gram_backward_op` on the torch backend: autograd through the reference."""
    kernel = KERNEL_NAMES[kid]
    inputs = (x, y, v, ell)
    leaves = tuple(
        None if t is None else t.detach().requires_grad_(need)
        for t, need in zip(inputs, needed, strict=True)
    )
    with autograd_inside_op():
        grads = differentiable_grads(
            lambda a, b, w, e: (
                gram_ref(a, b, kernel, e) if w is None else gram_ref(a, b, kernel, e) @ w
            ),
            leaves,
            needed,
            grad,
        )
    return tuple(None if g is None else g.detach() for g in grads)


def _gram_setup(ctx, inputs, output):
    x, y, ell, kid, backend = inputs
    need_x, need_y, need_ell = ctx.needs_input_grad[:3]
    keep_k = need_ell and not (need_x or need_y)
    ctx.save_for_backward(x, y, ell, output if keep_k else None)
    ctx.kid, ctx.backend = kid, backend


def _gram_backward(ctx, grad_k):
    x, y, ell, k = ctx.saved_tensors
    need_x, need_y, need_ell = needed = tuple(ctx.needs_input_grad[:3])
    if wants_double_backward(x, y, ell, grad_k):
        return (*double_backward(x, y, None, ell, ctx.kid, needed, grad_k), None, None)
    dx, dy, _, dell = gram_backward_op(
        x,
        y,
        k,
        grad_k.contiguous(),
        None,
        ell,
        ctx.kid,
        need_x,
        need_y,
        False,
        need_ell,
        ctx.backend,
    )
    need_y = need_y and y is not None
    return (
        none_if_empty(dx, need_x),
        none_if_empty(dy, need_y),
        none_if_empty(dell, need_ell),
        None,
        None,
    )


gram_op.register_autograd(_gram_backward, setup_context=_gram_setup)
register_batch_vmap(gram_op, leading=(0, 1))
register_loop_vmap(gram_backward_op)


# --------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------
def prepare_points(
    x: object,
    y: object,
    kernel: str,
    lengthscale: object,
    names: tuple[str, str] = ("x", "y"),
    *,
    values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """Validates x (…, M, D), optional y (…, N, D), kernel and lengthscale; errors call x and y
    by ``names``. ``values=False``: only what needs no data read (the registered op checks the
    values in its body, :func:`check_point_values`)."""
    kid = kernel_id(kernel)
    xn, yn = names
    x = check_tensor(x, xn, min_ndim=2)
    if y is not None:
        y = check_tensor(y, yn, min_ndim=2)
        check_same_kind([(x, xn), (y, yn)])
        if y.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"{yn}: feature dimension {y.shape[-1]} differs from {xn}'s {x.shape[-1]} "
                f"({xn} {tuple(x.shape)}, {yn} {tuple(y.shape)})"
            )
    ell = check_lengthscale(lengthscale, x, values=values)
    if values:
        check_points((x, xn), *([] if y is None else [(y, yn)]), squared=is_euclidean(kernel))
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
    if traced():
        x, y, ell, kid = prepare_points(x, y, kernel, lengthscale, values=False)
    else:
        x, y, ell, kid = prepare_points(x, y, kernel, lengthscale)
    name = resolve_backend("gram", backend, x.device)
    other = x if y is None else y
    batch = batch_shape(x.shape[:-2], other.shape[:-2], names=("x", "y"))
    m, n = x.shape[-2], other.shape[-2]
    if traced():
        y3 = None if y is None else flatten_batch(y, batch)
        return gram_op(flatten_batch(x, batch), y3, ell, kid, name).reshape(*batch, m, n)
    if name == "torch" or m == 0 or n == 0 or x.shape[-1] == 0 or batch.numel() == 0:
        k = gram_ref(x, y, kernel, ell)
        if name == "torch":
            note_backend("gram", "torch")
        return k.expand(*batch, m, n) if k.shape[:-2] != batch else k
    x3 = flatten_batch(x, batch)
    y3 = None if y is None else flatten_batch(y, batch)
    k = GramFunction.apply(x3, y3, ell, kid, name)
    return k.reshape(*batch, m, n)
