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

from .._backends import cpp_module, note_backend, resolve_backend, triton_module
from .._checks import as_columns, batch_shape, check_finite, check_same_kind, flatten_batch
from .cholesky import factor_with_jitter
from .gram import gram, gram_ref, prepare_points
from .gram_matmul import gram_matmul
from .ridge_solve import check_lam, ridge_solve

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


def _np(t):
    return None if t is None else t.detach().contiguous().numpy()


def _cpp_fused(x, y, shift, kid, ell, x_new, check_finite=False):
    alpha, pred, info = cpp_module().kernel_ridge_batched(
        _np(x), _np(y), _np(shift.double()), kid, float(ell), _np(x_new), check_finite
    )
    pred_t = None if pred is None else torch.from_numpy(pred)
    return torch.from_numpy(alpha), pred_t, torch.from_numpy(info).long()


def _fused_impl(backend: str):
    if backend == "cpp":
        return _cpp_fused
    return triton_module("fastamort.ops._triton_ridge").kernel_ridge_batched


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
    x, _, ell, kid = prepare_points(x, None, kernel, lengthscale)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: expected a torch.Tensor, got {type(y).__name__}")
    check_same_kind([("x", x), ("y", y)])
    n = x.shape[-2]
    y2, vector = as_columns(y, "y", n, ("x", x))
    shapes, names = [x.shape[:-2], y2.shape[:-2]], ["x", "y"]
    if x_new is not None:
        x_new = prepare_points(x_new, None, kernel, lengthscale, names=("x_new", "y"))[0]
        check_same_kind([("x", x), ("x_new", x_new)])
        if x_new.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"x_new: feature dimension {x_new.shape[-1]} differs from x's {x.shape[-1]}"
            )
        shapes.append(x_new.shape[:-2])
        names.append("x_new")
    lam_t = check_lam(lam, x)
    shapes.append(lam_t.shape)
    names.append("lam")
    try:
        if lam_t.ndim == 0 and all(s == shapes[0] for s in shapes[1:-1]):
            batch = shapes[0]  # nothing to broadcast
        else:
            batch = batch_shape(*shapes, names=names)
        name = resolve_backend("kernel_ridge_batched", backend, x.device)
    except Exception:
        check_finite(("y", y))  # non-finite y is reported first, as always
        raise
    p = y2.shape[-1]
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, y2, x_new, lam_t, ell)
    )
    composed = name == "torch" or wants_grad or n == 0
    # The cpp kernel checks y's finiteness itself while it reads y (the same ValueError,
    # without a separate pass); x and x_new were checked above.
    cpp_checks = name == "cpp" and not composed
    if not cpp_checks:
        check_finite(("y", y))
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
        fused = _fused_impl(name)
        if cpp_checks:
            fused = functools.partial(fused, check_finite=True)

        def run(index, shift):
            if index is None:
                return fused(x3, y3, shift, kid, ell.detach(), xn3)
            xn = None if xn3 is None else xn3[index]
            return fused(x3[index], y3[index], shift, kid, ell.detach(), xn)

        # k(x, x) = 1 on the diagonal for every kernel here: the jitter's scale is 1
        alpha, pred, _, _ = factor_with_jitter(
            run,
            lam3,
            lambda: torch.ones_like(lam3),
            n=n,
            dtype=x.dtype,
            jitter="auto",
            what="kernel_ridge_batched",
        )
        note_backend("kernel_ridge_batched", name)
        alpha = alpha.reshape(*batch, n, p)
        if pred is not None:
            pred = pred.reshape(*batch, x_new.shape[-2], p)
    if vector:
        alpha = alpha.squeeze(-1)
        pred = None if pred is None else pred.squeeze(-1)
    return KernelRidgeResult(alpha, pred)
