"""The torch backend of the factor/solve jobs (:class:`fastamort._backends.RidgeBackend`).

Pure PyTorch (``torch.linalg``), any device; the factor's pivots are checked as on the other
backends (:func:`~fastamort.ops._jitter.mark_tiny_pivots`). The torch backend of the Gram jobs
is the reference itself (:func:`fastamort.ops.gram.gram_ref`).
"""

from __future__ import annotations

import torch

from ._jitter import mark_tiny_pivots

__all__ = ["factor", "ridge", "solve"]


def _eye_shift(a: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return shift.to(a.dtype)[:, None, None] * eye


def factor(a: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, info (B,) int64) with L Lᵀ = tril(a) + shift·I; info > 0 marks failures."""
    lower, info = torch.linalg.cholesky_ex(a.tril() + _eye_shift(a, shift))
    return lower, mark_tiny_pivots(lower, info.long())


def solve(lower: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B, n, p) with L Lᵀ x = b."""
    return torch.cholesky_solve(b, lower)


def symmetric_rank2k(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha·(a bᵀ + b aᵀ) (B, n, n) for a, b (B, n, p), as one GEMM [a b]·[b a]ᵀ."""
    out = torch.cat([a, b], -1) @ torch.cat([b, a], -1).mT
    return out.mul_(alpha)


def ridge(k: torch.Tensor, b: torch.Tensor, shift: torch.Tensor):
    """(x, L, info) for (k + shift·I) x = b; x is NaN for the failed members."""
    lower, info = factor(k, shift)
    x = torch.cholesky_solve(b, lower)
    x = torch.where((info == 0)[:, None, None], x, torch.full_like(x, float("nan")))
    return x, lower, info
