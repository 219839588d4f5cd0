"""``kernel_ridge_batched``: many small kernel ridge regressions at once, fused.

For each problem b: K = gram(x_b), α = (K + λ_b I)⁻¹ y_b, and optionally the prediction
gram(x_new_b, x_b) @ α. On the ``cpp`` and ``triton`` backends K is built, factored and
solved per problem in cache (registers/shared memory on the GPU) and never written to
memory, with gradients too: the registered op has its own autograd formula. On the ``torch``
backend (and for n = 0) the composition ``gram`` → ``ridge_solve`` → ``gram_matmul`` runs.

Backward, with A = K + sI (s = λ + the jitter the forward used), K = k(x, x; ℓ),
α = A⁻¹y, prediction P = K_new α with K_new = k(x_new, x; ℓ), and upstream Ḡα, Ḡp:
    ᾱ = Ḡα + K_newᵀ Ḡp,  v = A⁻¹ ᾱ (the fused kernel again, with ᾱ for y),
    ȳ = v,  λ̄ = −Σ v∘α,  K̄ = −v αᵀ (symmetrised by the Gram VJP),  K̄_new = Ḡp αᵀ,
and x̄, x̄_new, ℓ̄ from K̄ and K̄_new by the backend's fused Gram-matmul backward (neither K
nor K_new is formed on the compiled backends).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .._backends import backend_impl, note_backend, resolve_backend
from .._checks import (
    as_columns,
    batch_shape,
    check_finite,
    check_points,
    check_same_kind,
    flatten_batch,
)
from ._jitter import factor_with_jitter
from ._library import none_if_empty, register_batch_vmap, traced
from .gram import (
    check_point_values,
    differentiable_grads,
    gram,
    gram_backward_op,
    gram_ref,
    gram_twice_differentiable,
    prepare_points,
    wants_double_backward,
)
from .gram_matmul import gram_matmul
from .kernel_math import KERNEL_NAMES, is_euclidean
from .ridge_solve import check_lam, check_lam_values, ridge_solve

__all__ = ["KernelRidgeResult", "kernel_ridge_batched", "kernel_ridge_batched_ref"]


class KernelRidgeResult(NamedTuple):
    """Dual coefficients ``alpha`` (..., n, p) and, if asked for, ``prediction`` (..., m, p)."""

    alpha: torch.Tensor
    prediction: torch.Tensor | None


def kernel_ridge_batched_ref(x, y, lam, kernel="gaussian", lengthscale=1.0, x_new=None):
    """Pure-PyTorch chain: gram → +λI → cholesky → solve (→ gram @ α); y (..., n, p)."""
    k = gram_ref(x, None, kernel, lengthscale)
    lam_t = torch.as_tensor(lam, dtype=k.dtype, device=k.device)
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    lower = torch.linalg.cholesky(k + lam_t[..., None, None] * eye)
    alpha = torch.cholesky_solve(y, lower)
    pred = None if x_new is None else gram_ref(x_new, x, kernel, lengthscale) @ alpha
    return KernelRidgeResult(alpha, pred)


def _fused(x, y, lam, ell, x_new, kid: int, backend: str, cpp_checks: bool = False):
    """(alpha (B, n, p), prediction (B, m, p) | None, jitter (B,)) of the fused kernel on
    ``backend``, with the jitter policy (jitter: float64, 0 where none was needed);
    ``cpp_checks``: the cpp kernel refuses a non-finite y itself."""
    fused = backend_impl("ridge", backend).kernel_ridge_batched
    if cpp_checks:
        fused = functools.partial(fused, check_finite=True)

    def run(index, shift):
        if index is None:
            return fused(x, y, shift, kid, ell, x_new)
        xn = None if x_new is None else x_new[index]
        return fused(x[index], y[index], shift, kid, ell, xn)

    # k(x, x) = 1 on the diagonal for every kernel here: the jitter's scale is 1
    alpha, pred, _, jitter = factor_with_jitter(
        run,
        lam,
        lambda: torch.ones_like(lam),
        n=x.shape[1],
        dtype=x.dtype,
        jitter="auto",
        what="kernel_ridge_batched",
    )
    note_backend("kernel_ridge_batched", backend)
    return alpha, pred, jitter


# --------------------------------------------------------------------------------------
# Registered ops (see fastamort.ops._library): fastamort::kernel_ridge_batched, the fused
# kernel with its autograd formula (module docstring), and fastamort::kernel_ridge_solve,
# the solve of its backward. Value checks and the jitter policy in the bodies.
# --------------------------------------------------------------------------------------
@torch.library.custom_op("fastamort::kernel_ridge_batched", mutates_args=())
def kernel_ridge_batched_op(
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    ell: torch.Tensor,
    x_new: torch.Tensor | None,
    kid: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha (B, n, p), prediction (B, m, p), shift (B,)) for x (B, n, d), y (B, n, p),
    λ (B,) float64, ℓ 0-d, x_new (B, m, d) or None; m = 0 without ``x_new``, and
    shift = λ + the jitter the factorisation needed (float64; the backward solves with it)."""
    check_point_values(x, None, ell, kid)
    if x_new is not None:
        check_points((x_new, "x_new"), squared=is_euclidean(KERNEL_NAMES[kid]))
    check_lam_values(lam)
    check_finite((y, "y"))
    alpha, pred, jitter = _fused(x, y, lam, ell, x_new, kid, backend)
    if pred is None:
        pred = alpha.new_empty(alpha.shape[0], 0, alpha.shape[2])
    return alpha.contiguous(), pred.contiguous(), (lam + jitter).contiguous()


@kernel_ridge_batched_op.register_fake
def _(x, y, lam, ell, x_new, kid, backend):
    m = 0 if x_new is None else x_new.shape[1]
    return y.new_empty(y.shape), y.new_empty(y.shape[0], m, y.shape[2]), lam.new_empty(lam.shape)


@torch.library.custom_op("fastamort::kernel_ridge_solve", mutates_args=())
def kernel_ridge_solve_op(
    x: torch.Tensor, b: torch.Tensor, shift: torch.Tensor, ell: torch.Tensor, kid: int, backend: str
) -> torch.Tensor:
    """v = (K(x, x) + shift·I)⁻¹ b (B, n, p) by the fused kernel, for shift (B,) float64: the
    solve of the backward (no value checks: x and ℓ were checked by the forward, and b is an
    upstream gradient; the shift factored there, jitter is only added should it fail now)."""
    v, _, _ = _fused(x, b, shift, ell, None, kid, backend)
    note_backend("kernel_ridge_batched.backward", backend)
    return v.contiguous()


@kernel_ridge_solve_op.register_fake
def _(x, b, shift, ell, kid, backend):
    return b.new_empty(b.shape)


def _setup(ctx, inputs, output):
    x, y, lam, ell, x_new, kid, backend = inputs
    alpha, _, shift = output
    ctx.mark_non_differentiable(shift)
    ctx.save_for_backward(x, y, lam, ell, x_new, alpha, shift)
    ctx.kid, ctx.backend = kid, backend


def _backward(ctx, grad_alpha, grad_pred, _grad_shift):
    """Gradients for (x, y, λ, ℓ, x_new) by the formulas of the module docstring. Under
    ``create_graph=True`` they come from the torch composition instead (differentiable again,
    at the composition's cost: K is formed)."""
    x, y, lam, ell, x_new, alpha, shift = ctx.saved_tensors
    needed = tuple(ctx.needs_input_grad[:5])
    need_x, need_y, need_lam, need_ell, need_new = needed
    kid, backend = ctx.kid, ctx.backend
    if wants_double_backward(x, y, lam, ell, x_new, grad_alpha, grad_pred):
        grads = _double_backward(x, y, lam, ell, x_new, shift, kid, needed, grad_alpha, grad_pred)
        return (*grads, None, None)
    g = grad_alpha
    dx = dell = dx_new = None
    if x_new is not None:  # the prediction's share: K̄_new = Ḡp αᵀ, and K_newᵀ Ḡp into ᾱ
        dx_new, dx, g_pred, dell = gram_backward_op(
            x_new, x, None, grad_pred.contiguous(), alpha, ell, kid,
            need_new, need_x, True, need_ell, backend,
        )  # fmt: skip
        g = g + g_pred
    v = kernel_ridge_solve_op(x, g.contiguous(), shift, ell, kid, backend)
    if need_x or need_ell:  # K̄ = −v αᵀ: the gradient of sum(−v ∘ K α)
        dx_k, _, _, dell_k = gram_backward_op(
            x, None, None, -v, alpha, ell, kid, need_x, False, False, need_ell, backend
        )
        dx = dx_k if dx is None else dx + dx_k
        dell = dell_k if dell is None else dell + dell_k
    dlam = -(v * alpha).sum(dim=(-2, -1)).to(lam.dtype) if need_lam else None
    return (
        none_if_empty(dx, need_x) if dx is not None else None,
        v if need_y else None,
        dlam,
        none_if_empty(dell, need_ell) if dell is not None else None,
        none_if_empty(dx_new, need_new) if dx_new is not None else None,
        None,
        None,
    )


def _double_backward(x, y, lam, ell, x_new, shift, kid, needed, grad_alpha, grad_pred):
    """The backward as a graph (``create_graph=True``): autograd through the torch
    composition, with the forward's jitter (shift − λ) held fixed."""
    kernel = KERNEL_NAMES[kid]
    jitter = (shift - lam).detach()

    def composed(a, b, lam_, e, q):
        k = gram_twice_differentiable(a, None, kernel, e)
        s = (lam_ + jitter).to(k.dtype)
        eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        alpha = torch.linalg.solve(k + s[:, None, None] * eye, b)
        out = alpha.flatten(1)
        if q is not None:
            pred = gram_twice_differentiable(q, a, kernel, e) @ alpha
            out = torch.cat([out, pred.flatten(1)], 1)
        return out

    grad = grad_alpha.flatten(1)
    if x_new is not None:
        grad = torch.cat([grad, grad_pred.flatten(1)], 1)
    grads = differentiable_grads(composed, (x, y, lam, ell, x_new), needed, grad)
    note_backend("kernel_ridge_batched.backward", "torch")
    return grads


kernel_ridge_batched_op.register_autograd(_backward, setup_context=_setup)
register_batch_vmap(kernel_ridge_batched_op, leading=(0, 1, 2, 4))
register_batch_vmap(kernel_ridge_solve_op, leading=(0, 1, 2))


def kernel_ridge_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    kernel: str = "gaussian",
    lengthscale: float | torch.Tensor = 1.0,
    x_new: torch.Tensor | None = None,
    backend: str = "auto",
) -> KernelRidgeResult:
    """Batched kernel ridge regression: fit on (x, y), optionally predict at ``x_new``.

    Args:
        x: training inputs ``(..., n, d)``; y: targets ``(..., n, p)`` or ``(..., n)``.
        lam: ridge λ ≥ 0, float or tensor broadcastable to the batch shape.
        kernel, lengthscale: as for :func:`fastamort.gram`.
        x_new: optional query points ``(..., m, d)``.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        :class:`KernelRidgeResult` ``(alpha, prediction)``; ``prediction`` is None without
        ``x_new``. Jitter policy and errors as for :func:`fastamort.ridge_solve`.

    Example:
        >>> import torch, fastamort
        >>> x = torch.linspace(0, 1, 5).reshape(1, 5, 1).double()
        >>> fit = fastamort.kernel_ridge_batched(x, x.sin(), 1e-6, x_new=x)
        >>> torch.allclose(fit.prediction, x.sin(), atol=1e-4)
        True
    """
    eager = not traced()
    x, _, ell, kid = prepare_points(x, None, kernel, lengthscale, values=eager)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: expected a torch.Tensor, got {type(y).__name__}")
    check_same_kind([(x, "x"), (y, "y")])
    n = x.shape[-2]
    y2, vector = as_columns(y, "y", n, (x, "x"))
    shapes, names = [x.shape[:-2], y2.shape[:-2]], ["x", "y"]
    if x_new is not None:
        x_new = prepare_points(
            x_new, None, kernel, lengthscale, names=("x_new", "y"), values=eager
        )[0]
        check_same_kind([(x, "x"), (x_new, "x_new")])
        if x_new.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"x_new: feature dimension {x_new.shape[-1]} differs from x's {x.shape[-1]}"
            )
        shapes.append(x_new.shape[:-2])
        names.append("x_new")
    lam_t = check_lam(lam, x, values=eager)
    shapes.append(lam_t.shape)
    names.append("lam")
    try:
        if lam_t.ndim == 0 and all(s == shapes[0] for s in shapes[1:-1]):
            batch = shapes[0]  # nothing to broadcast
        else:
            batch = batch_shape(*shapes, names=names)
        name = resolve_backend("kernel_ridge_batched", backend, x.device)
    except Exception:
        if eager:
            check_finite((y, "y"))  # non-finite y is reported first, as always
        raise
    p = y2.shape[-1]
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, y2, x_new, lam_t, ell)
    )
    composed = name == "torch" or n == 0
    # Without gradients eager calls run the kernel directly (no dispatcher, no autograd node);
    # with them, and under tracing, the registered op (its autograd formula, its checks).
    direct = eager and not wants_grad
    # The cpp kernel checks y's finiteness itself while it reads y (the same ValueError,
    # without a separate pass); x and x_new were checked above.
    cpp_checks = name == "cpp" and direct and not composed
    if eager and not cpp_checks:
        check_finite((y, "y"))
    if composed:
        kmat = gram(x, kernel=kernel, lengthscale=ell, backend=name)
        alpha = ridge_solve(kmat, y2, lam_t, backend=name)
        pred = None
        if x_new is not None:
            pred = gram_matmul(x_new, x, alpha, kernel=kernel, lengthscale=ell, backend=name)
        note_backend("kernel_ridge_batched", f"{name}:composed")
    else:
        x3, y3 = flatten_batch(x, batch), flatten_batch(y2, batch)
        xn3 = None if x_new is None else flatten_batch(x_new, batch)
        lam3 = lam_t.expand(batch).reshape(-1).double()  # autograd sums λ̄ back to lam's shape
        if direct:
            alpha, pred, _ = _fused(x3, y3, lam3, ell, xn3, kid, name, cpp_checks)
        else:
            alpha, pred, _ = kernel_ridge_batched_op(x3, y3, lam3, ell, xn3, kid, name)
        alpha = alpha.reshape(*batch, n, p)
        pred = None if x_new is None else pred.reshape(*batch, x_new.shape[-2], p)
    if vector:
        alpha = alpha.squeeze(-1)
        pred = None if pred is None else pred.squeeze(-1)
    return KernelRidgeResult(alpha, pred)
