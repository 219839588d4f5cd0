"""``kernel_ridge_batched``: many small kernel ridge regressions at once, fused.

For each problem b: K = gram(x_b), α = (K + λ_b I)⁻¹ y_b, and optionally the prediction
gram(x_new_b, x_b) @ α. On the ``cpp`` and ``triton`` backends K is built, factored and
solved per problem in cache (registers/shared memory on the GPU) and never written to
memory. With inputs that require gradients the differentiable composition
``gram`` → ``ridge_solve`` → ``gram_matmul`` runs instead (same result, autograd through
each op's own backward).
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
from ._library import register_batch_vmap, traced
from .gram import check_point_values, gram, gram_ref, prepare_points
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
    """(alpha (B, n, p), prediction (B, m, p) | None) of the fused kernel on ``backend``, with
    the jitter policy; ``cpp_checks``: the cpp kernel refuses a non-finite y itself."""
    fused = backend_impl("ridge", backend).kernel_ridge_batched
    if cpp_checks:
        fused = functools.partial(fused, check_finite=True)

    def run(index, shift):
        if index is None:
            return fused(x, y, shift, kid, ell, x_new)
        xn = None if x_new is None else x_new[index]
        return fused(x[index], y[index], shift, kid, ell, xn)

    # k(x, x) = 1 on the diagonal for every kernel here: the jitter's scale is 1
    alpha, pred, _, _ = factor_with_jitter(
        run,
        lam,
        lambda: torch.ones_like(lam),
        n=x.shape[1],
        dtype=x.dtype,
        jitter="auto",
        what="kernel_ridge_batched",
    )
    note_backend("kernel_ridge_batched", backend)
    return alpha, pred


# --------------------------------------------------------------------------------------
# Registered op fastamort::kernel_ridge_batched (see fastamort.ops._library): the fused
# kernel, forward only (with inputs that need gradients the public op composes the registered
# gram, ridge_solve and gram_matmul ops instead). Value checks and jitter in the body.
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha (B, n, p), prediction (B, m, p); m = 0 without ``x_new``) for x (B, n, d),
    y (B, n, p), λ (B,) float64, ℓ 0-d, x_new (B, m, d) or None."""
    check_point_values(x, None, ell, kid)
    if x_new is not None:
        check_points((x_new, "x_new"), squared=is_euclidean(KERNEL_NAMES[kid]))
    check_lam_values(lam)
    check_finite((y, "y"))
    alpha, pred = _fused(x, y, lam, ell, x_new, kid, backend)
    if pred is None:
        pred = alpha.new_empty(alpha.shape[0], 0, alpha.shape[2])
    return alpha.contiguous(), pred.contiguous()


@kernel_ridge_batched_op.register_fake
def _(x, y, lam, ell, x_new, kid, backend):
    m = 0 if x_new is None else x_new.shape[1]
    return y.new_empty(y.shape), y.new_empty(y.shape[0], m, y.shape[2])


register_batch_vmap(kernel_ridge_batched_op, leading=(0, 1, 2, 4))


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
    composed = name == "torch" or wants_grad or n == 0
    # The cpp kernel checks y's finiteness itself while it reads y (the same ValueError,
    # without a separate pass); x and x_new were checked above.
    cpp_checks = name == "cpp" and not composed
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
        lam3 = lam_t.detach().expand(batch).reshape(-1).double()
        if eager:
            alpha, pred = _fused(x3, y3, lam3, ell.detach(), xn3, kid, name, cpp_checks)
        else:
            alpha, pred = kernel_ridge_batched_op(x3, y3, lam3, ell.detach(), xn3, kid, name)
        alpha = alpha.reshape(*batch, n, p)
        pred = None if x_new is None else pred.reshape(*batch, x_new.shape[-2], p)
    if vector:
        alpha = alpha.squeeze(-1)
        pred = None if pred is None else pred.squeeze(-1)
    return KernelRidgeResult(alpha, pred)
