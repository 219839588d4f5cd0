"""``normal_matmul``: K(x, c)ᵀ · diag(w) · (K(x, c) · v + y) without storing K(x, c).

The product of the normal equations of Nyström kernel ridge regression: with n training points
x, m centres c and K = K(x, c) (n × m), ``normal_matmul(x, c, v)`` is Kᵀ K v (the operator a CG
iteration applies) and ``normal_matmul(x, c, y=y)`` is Kᵀ y (the right-hand side); ``weights``
puts diag(w) between the two (sample weights).

Backends:

* ``cpp``: one pass over x. Each thread forms the kernel rows of four points at a time (direct
  differences, register-blocked, then k(s)) and uses them for both products while they are in
  L1 (u = K_rows·v, then acc += K_rowsᵀ·(w·(u + y))); memory O(m·(D + p)) per thread.
* ``triton`` (CUDA): two passes of the fused :func:`fastamort.gram_matmul` in float64,
  u = K(x, c)·v, then K(c, x)·(w·(u + y)). Each pass streams K in tiles, but the kernel values
  are computed twice and the second pass has only ⌈m / block⌉ row blocks to spread over the GPU.
* ``torch``: :func:`normal_matmul_ref`, in row blocks of x (never the whole K either).

Precision: distances and kernel values in the dtype of x (float32 or float64); every product
and sum in float64. Measured on make_friedman1 (n = 2·10⁴, D = 8, m = 2000, rbf γ = 1,
preconditioned CG as in :class:`fastamort.NystromKernelRidge`): float32 kernel values (even
with float32 distances) summed in float64 give test predictions within 6·10⁻⁷ (α = 1) and
4·10⁻⁶ (α = 0.1) of the float64 solution, the same RMSE to four digits, while the same float32
kernel values multiplied and summed in float32 give RMSE 1.19 instead of 1.09 (α = 1) and 3.44
instead of 1.03 (α = 0.1): the sums over n, not the kernel values, lose the small
eigen-directions of KᵀK that α leaves to the solver.

Not differentiable: a call that would need gradients raises ValueError.
"""

from __future__ import annotations

import torch

from .._backends import note_backend, resolve_backend
from .._checks import check_finite, check_tensor
from . import _cpp
from .gram import gram_ref, prepare_points
from .gram_matmul import gram_matmul

__all__ = ["normal_matmul", "normal_matmul_ref"]

#: Entries of K(x, c) in one row block of the torch backend (32 MiB in float64).
BLOCK_ENTRIES = 1 << 22


def normal_matmul_ref(
    x: torch.Tensor,
    centres: torch.Tensor,
    v: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    kernel: str = "gaussian",
    lengthscale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Pure-PyTorch reference, (m, p) float64: ``gram_ref`` on row blocks of x (kernel values
    in x's dtype), products and sums in float64. v (m, p), y (n, p), weights (n,) or None."""
    m = centres.shape[0]
    p = (v if v is not None else y).shape[-1]
    out = torch.zeros(m, p, dtype=torch.float64, device=x.device)
    step = max(1, BLOCK_ENTRIES // max(m, 1))
    v64 = None if v is None else v.to(torch.float64)
    for i in range(0, x.shape[0], step):
        rows = slice(i, i + step)
        k = gram_ref(x[rows], centres, kernel, lengthscale).to(torch.float64)
        kv = None if v64 is None else k @ v64
        t = _weighted_sum(
            kv, None if y is None else y[rows], None if weights is None else weights[rows]
        )
        out += k.mT @ t
    return out


def _weighted_sum(
    kv: torch.Tensor | None, y: torch.Tensor | None, w: torch.Tensor | None
) -> torch.Tensor:
    """diag(w)·(K·v + y) (n, p) in float64, from K·v (float64) and y, w; None: left out."""
    t = kv
    if y is not None:
        t = y.to(torch.float64) if t is None else t + y.to(torch.float64)
    if w is not None:
        t = t * w.to(torch.float64)[:, None]
    return t


def _triton(x, centres, v, y, w, kernel: str, ell: float) -> torch.Tensor:
    x64, c64 = x.to(torch.float64), centres.to(torch.float64)
    kv = None
    if v is not None:
        kv = gram_matmul(x64, c64, v.to(torch.float64), kernel=kernel, lengthscale=ell,
                         backend="triton")  # fmt: skip
    t = _weighted_sum(kv, y, w)
    return gram_matmul(c64, x64, t, kernel=kernel, lengthscale=ell, backend="triton")


def _operand(t: object, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    t = check_tensor(t, name, min_ndim=1)
    if t.device != like.device:
        raise ValueError(f"{name}: device {t.device} differs from x's {like.device}")
    if t.ndim > 2 or t.shape[0] != rows:
        raise ValueError(f"{name}: expected shape ({rows}, p) or ({rows},), got {tuple(t.shape)}")
    check_finite((t, name))
    return t


def normal_matmul(
    x: torch.Tensor,
    centres: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    y: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    kernel: str = "gaussian",
    lengthscale: float | torch.Tensor = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """``K(x, centres)ᵀ · diag(weights) · (K(x, centres) · v + y)``, K never stored.

    Args:
        x: points, shape ``(n, D)``, float32 or float64: the precision of the distances and
            kernel values.
        centres: shape ``(m, D)``, x's dtype and device.
        v: shape ``(m, p)`` or ``(m,)``, or None (then only ``y``); float32 or float64.
        y: shape ``(n, p)`` or ``(n,)`` (as ``v``), or None; at least one of ``v``, ``y``.
        weights: shape ``(n,)`` or None (ones).
        kernel, lengthscale, backend: as for :func:`fastamort.gram`.

    Returns:
        shape ``(m, p)`` (``(m,)`` for vector operands), computed in float64 and returned in the
        dtype of ``v`` (of ``y`` when ``v`` is None).

    Example:
        >>> import torch
        >>> from fastamort.ops.normal_matmul import normal_matmul
        >>> x, c = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.0], [2.0]])
        >>> normal_matmul(x, c, y=torch.ones(3), lengthscale=1.0)  # K(x, c)ᵀ·1
        tensor([1.7419, 1.7419])
    """
    x, centres, ell, kid = prepare_points(x, centres, kernel, lengthscale, names=("x", "centres"))
    for name, t in (("x", x), ("centres", centres)):
        if t.ndim != 2:
            raise ValueError(f"{name}: expected shape (n, D), got {tuple(t.shape)}")
    if v is None and y is None:
        raise ValueError("v, y: give at least one of them")
    n, m = x.shape[0], centres.shape[0]
    v = None if v is None else _operand(v, "v", m, x)
    y = None if y is None else _operand(y, "y", n, x)
    weights = None if weights is None else _operand(weights, "weights", n, x)
    if weights is not None and weights.ndim != 1:
        raise ValueError(f"weights: expected shape ({n},), got {tuple(weights.shape)}")
    first = v if v is not None else y
    vector = first.ndim == 1
    if v is not None and y is not None and (v.ndim != y.ndim or v.shape[1:] != y.shape[1:]):
        raise ValueError(
            f"v, y: expected the same number of columns, got v {tuple(v.shape)} and y "
            f"{tuple(y.shape)}"
        )
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, centres, ell, v, y, weights)
    ):
        raise ValueError("normal_matmul is not differentiable: call it under torch.no_grad()")
    v2 = None if v is None else (v[:, None] if vector else v)
    y2 = None if y is None else (y[:, None] if vector else y)
    name = resolve_backend("normal_matmul", backend, x.device)
    if name == "cpp":
        out = _cpp.nystrom_normal_matmul(x, centres, v2, y2, weights, kid, float(ell))
    elif name == "triton":
        out = _triton(x, centres, v2, y2, weights, kernel, float(ell))
    else:
        out = normal_matmul_ref(x, centres, v2, y2, weights, kernel, ell)
    note_backend("normal_matmul", name)
    out = out.to(dtype=first.dtype)
    return out[:, 0] if vector else out
