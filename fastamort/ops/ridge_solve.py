"""``ridge_solve``: X = (K + λI)⁻¹ B by one Cholesky factorisation, with autograd.

Backward by the implicit-function formulas on the stored factor (no re-factorisation):
with A = K + λI and X = A⁻¹B, for an upstream gradient Ḡ of X,
    Ḃ = A⁻¹Ḡ (one more solve with the same factor),  K̄ = −½(ḂXᵀ + XḂᵀ),  λ̄ = −Σ Ḃ∘X.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.autograd.function import once_differentiable

from .._backends import backend_impl, note_backend, resolve_backend
from .._checks import (
    as_columns,
    batch_shape,
    check_finite,
    check_same_kind,
    check_tensor,
    flatten_batch,
    has_data,
    is_real_scalar,
)
from ._jitter import factor_with_jitter, mean_abs_diagonal
from ._library import register_batch_vmap, traced
from .cholesky import check_square

__all__ = ["ridge_solve", "ridge_solve_ref"]


def ridge_solve_ref(k: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference: ``torch.linalg.solve(k + lam·I, b)`` for (..., n, n), (..., n, p)."""
    lam_t = torch.as_tensor(lam, dtype=k.dtype, device=k.device)
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    return torch.linalg.solve(k + lam_t[..., None, None] * eye, b)


def check_lam(
    lam: object, like: torch.Tensor, name: str = "lam", *, values: bool = True
) -> torch.Tensor:
    """An op's λ ≥ 0 (a number, or a tensor of per-problem values) as a tensor of ``like``'s
    dtype and device (gradients kept). ``values=False``: a tensor's values are not read (the
    registered op checks them, :func:`check_lam_values`)."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"{name}: expected a floating tensor, got {lam.dtype}")
        if lam.device != like.device:
            raise ValueError(f"{name}: device {lam.device} differs from k's {like.device}")
        lam_t = lam.to(like.dtype)
        if not values:
            return lam_t
    elif is_real_scalar(lam):
        value = float(lam)
        if not math.isfinite(value):
            raise ValueError(f"{name}: contains NaN or infinite values")
        if value < 0:
            raise ValueError(f"{name}: must be >= 0, got a minimum of {value}")
        _check_in_range(value, name, like.dtype)
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    else:
        raise TypeError(f"{name}: expected a float or a tensor, got {type(lam).__name__}")
    check_lam_values(lam_t, name, original=lam)
    return lam_t


def check_lam_values(
    lam_t: torch.Tensor, name: str = "lam", original: torch.Tensor | None = None
) -> None:
    """Every λ finite and ≥ 0 (``original``: the tensor before its conversion to ``lam_t``'s
    dtype, which names a value that dtype cannot hold)."""
    if lam_t.numel() == 0 or not has_data(lam_t):
        return
    if not bool(torch.isfinite(lam_t).all()):
        if original is not None and bool(torch.isfinite(original.detach()).all()):
            _check_in_range(float(original.detach().abs().max()), name, lam_t.dtype)
        raise ValueError(f"{name}: contains NaN or infinite values")
    if bool((lam_t < 0).any()):
        raise ValueError(f"{name}: must be >= 0, got a minimum of {float(lam_t.min())}")


def _check_in_range(value: float, name: str, dtype: torch.dtype) -> None:
    """A finite λ that ``dtype`` cannot hold is refused by name (it would become ∞)."""
    largest = torch.finfo(dtype).max
    if abs(value) > largest:
        raise ValueError(
            f"{name}: {value:.3g} is beyond the range of {dtype} (largest {largest:.3g}); "
            "rescale k and lam together, or use float64"
        )


def _solve_forward(k, b, lam, backend: str, *, keep_lower: bool, check_finite: bool = False):
    """(X, L) for K (B, n, n), B (B, n, p), λ (B,) on one backend, with the jitter policy.

    ``keep_lower=False``: L is not needed (no backward will run); the ``cpp`` backend then
    skips writing the (B, n, n) factor and L is None. ``check_finite`` (``cpp`` only): the
    kernel raises ``ValueError("k: contains NaN or infinite values")`` (or ``b: …``) itself.
    """
    impl = backend_impl("ridge", backend)
    ridge = impl.ridge
    if backend == "cpp" and (not keep_lower or check_finite):
        ridge = functools.partial(ridge, keep_lower=keep_lower, check_finite=check_finite)

    def run(index, shift):
        if index is None:
            return ridge(k, b, shift)
        return ridge(k[index], b[index], shift)

    x, lower, _, _ = factor_with_jitter(
        run,
        lam.detach().double(),
        lambda: mean_abs_diagonal(k),
        n=k.shape[-1],
        dtype=k.dtype,
        jitter="auto",
        what="ridge_solve",
    )
    note_backend("ridge_solve", backend)
    return x, lower


def k_and_lam_grads(
    grad_b: torch.Tensor, x: torch.Tensor, need_k: bool, need_lam: bool, backend: str = "torch"
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of X = (K + λI)⁻¹ B w.r.t. K (..., n, n) and λ (...,), from Ḃ = (K + λI)⁻¹ Ẋ;
    K̄ = −½(ḂXᵀ + XḂᵀ) by the backend's symmetric product."""
    grad_k = grad_lam = None
    if need_k:
        shape = grad_b.shape
        flat = grad_b.reshape(-1, *shape[-2:]).contiguous(), x.reshape(-1, *shape[-2:]).contiguous()
        grad_k = backend_impl("ridge", backend).symmetric_rank2k(*flat, -0.5)
        grad_k = grad_k.reshape(*shape[:-2], shape[-2], shape[-2])
    if need_lam:
        grad_lam = -(grad_b * x).sum(dim=(-2, -1))
    return grad_k, grad_lam


class RidgeSolveFunction(torch.autograd.Function):
    """X = (K + λI)⁻¹ B on one backend, K (B, n, n), B (B, n, p), λ (B,)."""

    @staticmethod
    def forward(ctx, k, b, lam, backend: str):  # type: ignore[override]
        x, lower = _solve_forward(k, b, lam, backend, keep_lower=True)
        ctx.save_for_backward(x, lower)
        ctx.backend = backend
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):  # type: ignore[override]
        x, lower = ctx.saved_tensors
        grad_b = backend_impl("ridge", ctx.backend).solve(lower, grad_x.contiguous())
        note_backend("ridge_solve.backward", ctx.backend)
        need_k, _, need_lam, *_ = ctx.needs_input_grad
        grad_k, grad_lam = k_and_lam_grads(grad_b, x, need_k, need_lam, ctx.backend)
        return grad_k, grad_b, grad_lam, None


# --------------------------------------------------------------------------------------
# Registered ops (see fastamort.ops._library): fastamort::ridge_solve returns the factor too
# (saved for the backward, which solves with it by fastamort::cholesky_solve). Inputs
# batched: K (B, n, n), B (B, n, p), λ (B,); value checks and the jitter policy in the body.
# --------------------------------------------------------------------------------------
@torch.library.custom_op("fastamort::ridge_solve", mutates_args=())
def ridge_solve_op(
    k: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(X (B, n, p), L (B, n, n)) with X = (K + λI)⁻¹ B and L Lᵀ = K + (λ + jitter)I."""
    check_finite((k, "k"), (b, "b"))
    check_lam_values(lam)
    x, lower = _solve_forward(k, b, lam, backend, keep_lower=True)
    return x.contiguous(), lower.contiguous()  # the strides the fake implementation states


@ridge_solve_op.register_fake
def _(k, b, lam, backend):
    return b.new_empty(b.shape), k.new_empty(k.shape)


@torch.library.custom_op("fastamort::cholesky_solve", mutates_args=())
def cholesky_solve_op(lower: torch.Tensor, b: torch.Tensor, backend: str) -> torch.Tensor:
    """X (B, n, p) with L Lᵀ X = B for lower-triangular L (B, n, n)."""
    return backend_impl("ridge", backend).solve(lower, b.contiguous()).contiguous()


@cholesky_solve_op.register_fake
def _(lower, b, backend):
    return b.new_empty(b.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*output)
    ctx.backend = inputs[3]


def _backward(ctx, grad_x, _grad_lower):
    x, lower = ctx.saved_tensors
    grad_b = cholesky_solve_op(lower, grad_x.contiguous(), ctx.backend)
    note_backend("ridge_solve.backward", ctx.backend)
    need_k, _, need_lam, *_ = ctx.needs_input_grad
    grad_k, grad_lam = k_and_lam_grads(grad_b, x, need_k, need_lam, ctx.backend)
    return grad_k, grad_b, grad_lam, None


ridge_solve_op.register_autograd(_backward, setup_context=_setup)
register_batch_vmap(ridge_solve_op, leading=(0, 1, 2))
register_batch_vmap(cholesky_solve_op, leading=(0, 1))


def ridge_solve(
    k: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Solves ``(k + lam·I) X = b`` through one Cholesky factorisation.

    Args:
        k: symmetric matrices ``(..., n, n)`` (lower triangle read), float32 or float64.
        b: right-hand sides ``(..., n, p)``, or ``(..., n)`` when ``b.ndim == k.ndim - 1``.
        lam: ridge λ ≥ 0: a float, or a tensor broadcastable to the batch shape ``(...)``.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        ``X`` with the shape of ``b`` (batch dimensions broadcast). Differentiable w.r.t.
        ``k``, ``b`` and a tensor ``lam``. When ``k + lam·I`` is not numerically positive
        definite, jitter is added to the failing members only (see
        :mod:`fastamort.ops.cholesky`), with a ``NumericalWarning``; ``NotPSDError`` if that
        does not help.

    Example:
        >>> import torch, fastamort
        >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> fastamort.ridge_solve(k, torch.tensor([3.0, 3.0]), 1.0)
        tensor([0.7500, 0.7500])
    """
    k = check_square(k, "k")
    b = check_tensor(b, "b", min_ndim=1)
    check_same_kind([(k, "k"), (b, "b")])
    n = k.shape[-1]
    b2, vector = as_columns(b, "b", n, (k, "k"))
    eager = not traced()
    lam_t = check_lam(lam, k, values=eager)
    try:
        name = resolve_backend("ridge_solve", backend, k.device)
        if k.shape[:-2] == b2.shape[:-2] and lam_t.ndim == 0:
            batch = k.shape[:-2]  # nothing to broadcast
        else:
            batch = batch_shape(k.shape[:-2], b2.shape[:-2], lam_t.shape, names=("k", "b", "lam"))
    except Exception:
        if eager:
            check_finite((k, "k"), (b, "b"))  # non-finite input is reported first, as always
        raise
    p = b2.shape[-1]
    if not eager:
        lam3 = lam_t.expand(batch).reshape(-1)
        x, _ = ridge_solve_op(flatten_batch(k, batch), flatten_batch(b2, batch), lam3, name)
        x = x.reshape(*batch, n, p)
        return x.squeeze(-1) if vector else x
    needs_grad = (
        torch.is_grad_enabled() and (k.requires_grad or b.requires_grad or lam_t.requires_grad)
    ) or _forward_ad_active()
    # Without a backward to record, the cpp kernel checks finiteness itself while it reads k
    # and b (the same ValueError, without a separate pass over them); else it is checked here.
    fast = name == "cpp" and not needs_grad
    if not fast:
        check_finite((k, "k"), (b, "b"))
    k3, b3 = flatten_batch(k, batch), flatten_batch(b2, batch)
    lam3 = lam_t.expand(batch).reshape(-1)
    if needs_grad:
        x = RidgeSolveFunction.apply(k3, b3, lam3, name)
    else:  # nothing to differentiate: no autograd node, and no factor kept for a backward
        x, _ = _solve_forward(k3, b3, lam3, name, keep_lower=False, check_finite=fast)
    x = x.reshape(*batch, n, p)
    return x.squeeze(-1) if vector else x


def _forward_ad_active() -> bool:
    """Inside ``torch.autograd.forward_ad.dual_level()``: the autograd Function must run (it
    reports that forward-mode AD is not implemented) rather than drop the tangents."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0
