"""``cholesky``: lower Cholesky factors on three backends, with safe failure and autograd.

The jitter policy (``jitter="auto"``) and its errors live in :mod:`fastamort.ops._jitter`;
:class:`NotPSDError`, :class:`NumericalWarning` and the jitter constants stay importable here.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._backends import backend_impl, note_backend, resolve_backend
from .._checks import check_finite, check_tensor
from ._jitter import (
    JITTER_RETRIES,
    JITTER_START,
    NotPSDError,
    NumericalWarning,
    check_jitter,
    factor_with_jitter,
    mean_abs_diagonal,
)
from ._library import register_batch_vmap, traced

__all__ = [
    "JITTER_RETRIES",
    "JITTER_START",
    "NotPSDError",
    "NumericalWarning",
    "cholesky",
    "cholesky_ref",
]


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------
def cholesky_ref(a: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch lower Cholesky factor of ``a`` (..., n, n), lower triangle read."""
    return torch.linalg.cholesky(a)


# --------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------
def cholesky_backward(lower: torch.Tensor, grad_lower: torch.Tensor) -> torch.Tensor:
    """dA from dL for A = L·Lᵀ, symmetric (implicit-function formula, no re-factorisation).

    dA = ½(S + Sᵀ), S = L⁻ᵀ·Φ(Lᵀ·dL)·L⁻¹, Φ = lower triangle with the diagonal halved.
    """
    phi = (lower.mT @ grad_lower).tril()
    phi = phi - 0.5 * torch.diag_embed(phi.diagonal(dim1=-2, dim2=-1))
    s = torch.linalg.solve_triangular(lower.mT, phi, upper=True, left=True)
    s = torch.linalg.solve_triangular(lower, s, upper=False, left=False)
    return 0.5 * (s + s.mT)


def _factor(a: torch.Tensor, backend: str, jitter: str | float) -> torch.Tensor:
    """L (B, n, n) of a (B, n, n) on ``backend`` with the jitter policy."""
    impl = backend_impl("ridge", backend)
    zero = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)

    def run(index, shift):
        return impl.factor(a if index is None else a[index], shift)

    lower, _, _ = factor_with_jitter(
        run,
        zero,
        lambda: mean_abs_diagonal(a),
        n=a.shape[-1],
        dtype=a.dtype,
        jitter=jitter,
        what="cholesky",
    )
    note_backend("cholesky", backend)
    return lower


class CholeskyFunction(torch.autograd.Function):
    """L = chol(a + jitter·I) on one backend; jitter chosen in forward, constant in backward."""

    @staticmethod
    def forward(ctx, a, backend: str, jitter):  # type: ignore[override]
        lower = _factor(a, backend, jitter)
        ctx.save_for_backward(lower)
        return lower

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lower):  # type: ignore[override]
        (lower,) = ctx.saved_tensors
        return cholesky_backward(lower, grad_lower.tril()), None, None


# --------------------------------------------------------------------------------------
# Registered op fastamort::cholesky (see fastamort.ops._library): a (B, n, n); the finiteness
# check and the jitter policy run in its body. ``jitter`` < 0 stands for "auto".
# --------------------------------------------------------------------------------------
@torch.library.custom_op("fastamort::cholesky", mutates_args=())
def cholesky_op(a: torch.Tensor, jitter: float, backend: str) -> torch.Tensor:
    """L (B, n, n) with L Lᵀ = a + jitter·I (jitter chosen by the policy; ``jitter`` < 0:
    ``"auto"``, else the first jitter tried)."""
    check_finite((a, "a"))
    return _factor(a, backend, "auto" if jitter < 0 else jitter).contiguous()


@cholesky_op.register_fake
def _(a, jitter, backend):
    return a.new_empty(a.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, grad_lower):
    (lower,) = ctx.saved_tensors
    return cholesky_backward(lower, grad_lower.tril()), None, None


cholesky_op.register_autograd(_backward, setup_context=_setup)
register_batch_vmap(cholesky_op, leading=(0,))


# --------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------
def check_square(a: object, name: str) -> torch.Tensor:
    """A float32/float64 tensor of shape (..., n, n)."""
    a = check_tensor(a, name, min_ndim=2)
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: expected square matrices (..., n, n), got {tuple(a.shape)}")
    return a


def cholesky(
    a: torch.Tensor, *, jitter: str | float = "auto", backend: str = "auto"
) -> torch.Tensor:
    """Lower-triangular ``L`` with ``L @ L.mT == a`` (plus jitter where it was needed).

    Args:
        a: symmetric positive-definite matrices ``(..., n, n)``, float32 or float64; only the
            lower triangle is read.
        jitter: ``"auto"`` (the escalating policy in this module's docstring), a positive
            float (the first jitter, absolute), or ``0`` to fail at once.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Raises:
        NotPSDError: a matrix stays indefinite with the jitter tried.
        ValueError: non-finite entries, or not square.

    Example:
        >>> import torch, fastamort
        >>> fastamort.cholesky(torch.tensor([[4.0, 2.0], [2.0, 5.0]]))
        tensor([[2., 0.],
                [1., 2.]])
    """
    a = check_square(a, "a")
    eager = not traced()
    if eager:
        check_finite((a, "a"))
    checked = check_jitter(jitter)
    name = resolve_backend("cholesky", backend, a.device)
    batch, n = a.shape[:-2], a.shape[-1]
    a3 = a.reshape(batch.numel(), n, n)
    if not eager:
        first = -1.0 if checked == "auto" else float(checked)
        return cholesky_op(a3, first, name).reshape(*batch, n, n)
    lower = CholeskyFunction.apply(a3, name, jitter)
    return lower.reshape(*batch, n, n)
