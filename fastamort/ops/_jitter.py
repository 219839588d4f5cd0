"""The jitter policy of every factorisation, and its errors.

Jitter policy (``jitter="auto"``): factor every batch member as given; for the members that
fail (and only those) add ``JITTER_START[dtype] × mean|diag|`` to the diagonal and retry,
×10 per retry, up to ``10**JITTER_RETRIES`` times the first jitter (the cap: 0.1 × mean|diag|
in float32, 1e-5 × mean|diag| in float64), with a :class:`NumericalWarning` each time; then
raise :class:`NotPSDError` naming the size, dtype, batch index and the jitter tried.
Non-finite input is refused up front with ``ValueError`` (never ``NotPSDError``). A member whose
jitter scale (mean |diagonal| + λ) is 0, or so small that its first jitter is not a normal number
of the dtype, is reported at once: there is no jitter relative to it.

A factorisation succeeds only with every pivot L_jj² a positive *normal* number on every backend:
LAPACK and cuSOLVER accept any positive pivot, and a subnormal one (a numerically zero matrix)
gives a factor whose solve overflows to ∞ and NaN.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable

import torch

from .._checks import has_data, is_real_scalar

__all__ = [
    "JITTER_RETRIES",
    "JITTER_START",
    "NotPSDError",
    "NumericalWarning",
    "check_jitter",
    "factor_with_jitter",
    "mark_tiny_pivots",
    "mean_abs_diagonal",
]

#: First jitter, relative to the mean absolute diagonal, per dtype.
JITTER_START = {torch.float32: 1e-6, torch.float64: 1e-10}
#: ×10 steps after the first jittered try: the last adds ``10**JITTER_RETRIES × JITTER_START``,
#: 0.1 (float32) or 1e-5 (float64) times the mean |diagonal| (six jittered tries in all).
JITTER_RETRIES = 5


class NotPSDError(ValueError):
    """A matrix is not (numerically) positive definite, even with the jitter tried."""


class NumericalWarning(RuntimeWarning):
    """Jitter was added to a diagonal to make a factorisation succeed."""


def mark_tiny_pivots(lower: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """``info`` with the members whose factor ``lower`` (B, n, n) has a pivot L_jj² below the
    dtype's smallest normal number marked failed (j + 1 for the first): their solve overflows."""
    if lower.numel() == 0:
        return info
    small = lower.diagonal(dim1=-2, dim2=-1).abs() < math.sqrt(torch.finfo(lower.dtype).tiny)
    first = torch.argmax(small.to(torch.int8), dim=-1) + 1
    return torch.where((info == 0) & small.any(-1), first, info)


def check_jitter(jitter: object) -> str | float:
    """``"auto"``, or the first jitter as a finite float ≥ 0 (0, None, False: no jitter)."""
    if jitter is None or jitter is False or (isinstance(jitter, str) and jitter == "auto"):
        return "auto" if jitter else 0.0
    if not is_real_scalar(jitter) or not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter: expected 'auto', 0 or a positive finite float, got {jitter!r}")
    return float(jitter)


def factor_with_jitter(
    run: Callable[[torch.Tensor, torch.Tensor], tuple],
    shift: torch.Tensor,
    diag: Callable[[], torch.Tensor],
    *,
    n: int,
    dtype: torch.dtype,
    jitter: str | float | None,
    what: str,
) -> tuple:
    """Runs ``run(index, shift)``, which factorises the batch members ``index`` (None: all)
    with ``shift`` (float64) added to their diagonals, and retries the failed ones with jitter.

    ``diag()`` gives each matrix's mean absolute diagonal (B,), the jitter's scale; it is
    only called when a factorisation failed. ``run``
    returns a tuple whose last element is ``info`` (B',), non-zero where it failed. Returns
    that tuple for the whole batch, plus the jitter finally used per member (float64, (B,)).
    """
    n_batch = shift.shape[0]
    out = list(run(None, shift))
    used = torch.zeros(n_batch, dtype=torch.float64, device=shift.device)
    if n_batch == 0 or n == 0 or not has_data(out[-1]) or not bool(out[-1].any()):
        return (*out, used)  # (a meta tensor has shapes, no values to retry)
    failed = torch.nonzero(out[-1] != 0).flatten()
    if check_jitter(jitter) == 0:
        _raise_not_psd(n, dtype, failed, None, what)
    if jitter == "auto":
        scale = diag().detach().double().abs() + shift.abs()
        start = JITTER_START[dtype] * scale
        unscaled = failed[start[failed] < torch.finfo(dtype).tiny]
        if unscaled.numel() > 0:
            _raise_not_psd(n, dtype, unscaled, None, what, scale=scale[unscaled])
    else:
        start = torch.full_like(shift, float(jitter))
    for attempt in range(JITTER_RETRIES + 1):
        extra = start[failed] * 10.0**attempt
        warnings.warn(
            f"{what}: {failed.numel()} of {n_batch} matrices ({n}×{n}, {dtype}) not positive "
            f"definite; retrying with jitter {float(extra.max()):.3g} added to the diagonal "
            f"(batch indices {_show(failed)})",
            NumericalWarning,
            stacklevel=_user_stacklevel(),
        )
        retry = run(failed, shift[failed] + extra)
        for slot, value in zip(out, retry, strict=True):
            if slot is not None:
                slot[failed] = value
        used[failed] = extra
        failed = failed[retry[-1] != 0]
        if failed.numel() == 0:
            return (*out, used)
    _raise_not_psd(n, dtype, failed, start[failed] * 10.0**JITTER_RETRIES, what)
    raise AssertionError("unreachable")


def mean_abs_diagonal(a: torch.Tensor) -> torch.Tensor:
    """(B,) mean |a_ii| of (B, n, n) matrices."""
    return a.detach().diagonal(dim1=-2, dim2=-1).abs().mean(-1)


_INTERNAL_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.path.dirname(os.path.abspath(torch.__file__)),
)


def _user_stacklevel() -> int:
    """stacklevel that points a warning at the first frame outside fastamort and torch."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _show(index: torch.Tensor, limit: int = 8) -> str:
    items = index[:limit].tolist()
    return ", ".join(map(str, items)) + (", …" if index.numel() > limit else "")


def _raise_not_psd(n, dtype, failed, jitter_tried, what, scale=None):
    where = f"{what}: matrix of size {n}×{n} ({dtype}) at batch index {_show(failed)}"
    if scale is not None:
        largest = float(scale.max())
        size = "zero" if largest == 0 else f"only {largest:.3g}"
        raise NotPSDError(
            f"{where} is not positive definite, and its diagonal plus the ridge is {size}, "
            f"too small for a jitter relative to it in {dtype} (it is singular). Increase the "
            "ridge (lam/alpha), rescale the matrix, or check it"
        )
    tried = (
        "no jitter (jitter=0)"
        if jitter_tried is None
        else (f"jitter up to {float(jitter_tried.max()):.3g} on the diagonal")
    )
    raise NotPSDError(
        f"{where} is not positive definite, even with {tried}. Increase the ridge (lam/alpha), "
        "use float64, or check the matrix"
    )
