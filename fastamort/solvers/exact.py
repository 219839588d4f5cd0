"""The exact solve: one M×M Gram matrix and one Cholesky with 1 + P right-hand sides.

R = K_sw V by one fused ``gram_matmul`` (K_sw never stored) — unless V has more columns than
there are wake points: then R = K_sw (M×N) and the solution is contracted with V afterwards,
which needs fewer solves (the authors' order). O(M³) time, O(M²) memory.
"""

from __future__ import annotations

import torch

from ..kernels import Kernel
from ..ops import ridge_solve


@torch.no_grad()
def exact_weights(
    kernel: Kernel, fs: torch.Tensor, fw: torch.Tensor, v: torch.Tensor, lam: float
) -> tuple[torch.Tensor, dict]:
    """W (M, P) = (K + λI)⁻¹ K_sw V exactly (float64 Cholesky), and an (empty) info dict."""
    if v.shape[1] <= fw.shape[0]:
        rhs, contract = kernel.gram_matmul_features(fs, fw, v), None
    else:
        rhs, contract = kernel.gram_features(fs, fw), v
    weights = ridge_solve(kernel.gram_features(fs), rhs, lam, backend=kernel.backend)
    if contract is not None:
        weights = weights @ contract
    return weights, {}
