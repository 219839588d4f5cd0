"""Input validation shared by the public ops: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
T = TypeVar("T")


def is_real_scalar(value: object) -> bool:
    """A Python or NumPy real number (ints included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (NumPy integers too): TypeError naming ``name`` for a
    non-integer (floats, bools, None), ValueError when it is too small."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if n < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {n}")
    return n


def has_data(t: torch.Tensor) -> bool:
    """False for a meta tensor (shapes only): checks of the values skip it."""
    return t.device.type != "meta"


def check_tensor(t: object, name: str, *, min_ndim: int = 0) -> torch.Tensor:
    """A float32/float64 tensor with at least ``min_ndim`` dimensions (finiteness apart).

    A view with the negative bit set (``x.conj().imag`` of a complex ``x``) comes back resolved,
    as a plain tensor: the compiled backends read memory directly.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected dtype float32 or float64, got {t.dtype} "
            "(convert with .float() or .double())"
        )
    if t.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimensions, got shape {tuple(t.shape)}"
        )
    if torch.compiler.is_compiling():  # traced tensors carry no negative bit
        return t
    return t.resolve_neg() if t.is_neg() else t


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (≥ 0 with ``allow_zero``): TypeError for a non-number
    (or bool), else ValueError."""
    if not is_real_scalar(value):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected a {kind} finite number, got {value!r}")
    return float(value)


def first_nonfinite(labelled: Iterable[tuple[torch.Tensor, T]]) -> T | None:
    """The label of the first tensor of ``labelled`` (tensor, label) holding a NaN or an
    infinity, or None. Fast path: one sum per tensor, stacked and read once; a sum is finite
    only if every entry is (NaN and ±inf propagate), and the reduction is ~10-20× cheaper than
    ``isfinite(t).all()``. Only when a sum is not finite (a bad entry, or an overflow of huge
    finite values) is each tensor checked entry-wise."""
    live = [(t, label) for t, label in labelled if t.numel() > 0 and has_data(t)]
    if not live or bool(torch.isfinite(torch.stack([t.sum() for t, _ in live])).all()):
        return None
    return next((label for t, label in live if not bool(torch.isfinite(t).all())), None)


def check_finite(*named: tuple[torch.Tensor, str]) -> None:
    """Every tensor of ``named`` (tensor, name) is free of NaN and infinity."""
    name = first_nonfinite(named)
    if name is not None:
        raise ValueError(f"{name}: contains NaN or infinite values")


def traced() -> bool:
    """True under ``torch.compile`` tracing or inside a ``torch.func`` transform (vmap, grad):
    checks that read values then run inside registered ops, not in Python."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def finite_or_raise(anchor: torch.Tensor, *checks: tuple[torch.Tensor, str]) -> torch.Tensor:
    """``anchor``, once every tensor of ``checks`` (tensor, message) is free of NaN and infinity;
    else ``ValueError(message)`` of the first that is not.

    Eager: checked here and ``anchor`` itself returned. Traced (:func:`traced`): checked inside
    the registered op ``fastamort::check_finite`` (no graph break), which returns a copy of
    ``anchor``; the caller uses it in ``anchor``'s place, which keeps the check in the graph.
    """
    if not checks:
        return anchor
    if traced():
        tensors, messages = zip(*checks, strict=True)
        return _check_finite_op(anchor, list(tensors), "\n".join(messages))
    message = first_nonfinite(checks)
    if message is not None:
        raise ValueError(message)
    return anchor


@torch.library.custom_op("fastamort::check_finite", mutates_args=())
def _check_finite_op(
    anchor: torch.Tensor, tensors: list[torch.Tensor], messages: str
) -> torch.Tensor:
    """A copy of ``anchor`` once each of ``tensors`` is finite (messages: one a line)."""
    for t, message in zip(tensors, messages.split("\n"), strict=True):
        if t.numel() > 0 and not bool(torch.isfinite(t).all()):
            raise ValueError(message)
    return anchor.clone()


@_check_finite_op.register_fake
def _(anchor, tensors, messages):
    return torch.empty_like(anchor)


def _check_finite_backward(ctx, grad):
    return grad, None, None


def _check_finite_vmap(info, in_dims, anchor, tensors, messages):
    return _check_finite_op(anchor, tensors, messages), in_dims[0]


_check_finite_op.register_autograd(_check_finite_backward, setup_context=lambda *_: None)
torch.library.register_vmap(_check_finite_op, _check_finite_vmap)


def as_columns(
    t: torch.Tensor, name: str, n: int, ref: tuple[torch.Tensor, str]
) -> tuple[torch.Tensor, bool]:
    """``t`` as (…, n, p) columns, and whether it was a vector (…, n): it is one exactly when
    it has one dimension fewer than the tensor ``ref`` (tensor, name) it goes with."""
    ref_t, ref_name = ref
    vector = t.ndim == ref_t.ndim - 1
    cols = t.unsqueeze(-1) if vector else t
    if cols.ndim < 2 or cols.shape[-2] != n:
        raise ValueError(
            f"{name}: expected shape (..., {n}, p), or (..., {n}) with one dimension fewer "
            f"than {ref_name} {tuple(ref_t.shape)}; got {tuple(t.shape)}"
        )
    return cols, vector


def check_same_kind(tensors: Sequence[tuple[torch.Tensor, str]]) -> None:
    """All tensors of ``tensors`` (tensor, name) share the first one's dtype and device."""
    first, first_name = tensors[0]
    for t, name in tensors[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from {first_name}'s {first.dtype}")
        if t.device != first.device:
            raise ValueError(
                f"{name}: device {t.device} differs from {first_name}'s {first.device}"
            )


def check_lengthscale(
    lengthscale: object, like: torch.Tensor, *, values: bool = True
) -> torch.Tensor:
    """The lengthscale as a 0-d tensor of ``like``'s dtype and device (gradients kept).

    ``values=False``: a tensor's value is not read (no host sync; the op checks it in its body
    by :func:`check_lengthscale_value`), only its type and shape.
    """
    if isinstance(lengthscale, torch.Tensor):
        if lengthscale.ndim != 0:
            raise ValueError(
                f"lengthscale: expected a float or a 0-d tensor, got shape "
                f"{tuple(lengthscale.shape)}"
            )
        if not lengthscale.is_floating_point():
            raise TypeError(f"lengthscale: expected a floating tensor, got {lengthscale.dtype}")
        ell = lengthscale.to(dtype=like.dtype, device=like.device)
        if not values or not has_data(lengthscale):
            return ell
        value = float(lengthscale.detach())
    elif is_real_scalar(lengthscale):
        value = float(lengthscale)
        ell = torch.tensor(value, dtype=like.dtype, device=like.device)
    else:
        raise TypeError(
            f"lengthscale: expected a float or a 0-d tensor, got {type(lengthscale).__name__}"
        )
    check_lengthscale_value(value, like.dtype)
    return ell


def check_lengthscale_value(value: float, dtype: torch.dtype) -> None:
    """A lengthscale ``value`` positive, finite and large enough that ``dtype`` holds ℓ²."""
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"lengthscale: must be positive and finite, got {value}")
    smallest = math.sqrt(torch.finfo(dtype).tiny)  # ℓ² a normal number, 1/ℓ² finite
    if value < smallest:
        raise ValueError(
            f"lengthscale: {value:.3g} is below {smallest:.3g}, the smallest whose square "
            f"{dtype} holds (rescale the points, or use float64)"
        )


def check_points(*named: tuple[torch.Tensor, str], squared: bool = True) -> None:
    """Finite points (tensor, name) small enough that their distances cannot overflow: squared
    Euclidean (``squared``) distances by the GEMM trick are at most 4·D·max|x|², L1 ones
    2·D·max|x|."""
    named = tuple((t, n) for t, n in named if t.numel() > 0 and has_data(t))
    if not named:
        return
    peaks = torch.stack([torch.stack(torch.aminmax(t.detach())).abs().amax() for t, _ in named])
    finfo = torch.finfo(named[0][0].dtype)
    d = max(named[0][0].shape[-1], 1)
    limit = math.sqrt(finfo.max / (4 * d)) if squared else finfo.max / (2 * d)
    if bool((peaks <= limit).all()):  # False for NaN
        return
    check_finite(*named)
    name, peak = max(zip((n for _, n in named), peaks.tolist(), strict=True), key=lambda p: p[1])
    raise ValueError(
        f"{name}: values up to {peak:.3g} are too large for {named[0][0].dtype}: the "
        f"{'squared ' if squared else ''}distances would overflow (limit {limit:.3g} for "
        f"D = {d}); rescale the points and the lengthscale together"
    )


def batch_shape(*shapes: torch.Size, names: Sequence[str]) -> torch.Size:
    """Broadcast leading batch shapes, naming the arguments when they do not fit."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError as exc:
        described = ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"batch dimensions do not broadcast: {described}") from exc


def flatten_batch(t: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """(…, A, B) broadcast to ``batch`` and flattened to (prod(batch), A, B)."""
    if t.shape[:-2] == batch:  # nothing to broadcast: a view, no expand
        return t.reshape(batch.numel(), *t.shape[-2:])
    return t.expand(*batch, *t.shape[-2:]).reshape(batch.numel(), *t.shape[-2:])
