"""Kernel learning: the KRR prediction error of the log joint on held-out sleep samples.

The estimator is only as good as the regression of the log joint (or its exponential-family
parts) on x. :func:`kernel_loss` fits the KRR on one sleep set and scores it on a separate,
held-out sleep set — the authors' criterion, with the per-sample error (five of their
notebooks averaged the prediction first, AUTHORS_CODE.md §6.1). It is differentiable w.r.t.
the kernel's lengthscale and feature network and w.r.t. λ, through ``gram``,
``ridge_solve`` and ``gram_matmul``; the targets are detached (the model is not trained here).
"""

from __future__ import annotations

from typing import Any

import torch

from .estimator import KRR_DTYPE, regression_targets, resolve_estimator
from .kernels import Kernel
from .models.base import check_model
from .ops import ridge_solve


def kernel_loss(
    model: torch.nn.Module,
    kernel: Kernel,
    sleep: tuple[Any, torch.Tensor],
    held_out: tuple[Any, torch.Tensor],
    lam: float | torch.Tensor,
    *,
    estimator: str = "auto",
) -> torch.Tensor:
    """Mean squared error of the KRR-predicted log joint at held-out sleep samples.

    Args:
        model: the generative model (its targets are evaluated without gradient).
        kernel: the kernel to score (gradients flow to its parameters).
        sleep: ``(z, x)`` the regression is fitted on, M samples.
        held_out: ``(z', x')`` it is scored on, M' samples.
        lam: ridge λ > 0 (a tensor that requires grad to learn it).
        estimator: which regression the estimator will run ("auto", "generic", "expfam").

    Returns:
        0-d float64 tensor.
    """
    check_model(model)
    estimator = resolve_estimator(model, estimator)
    (z, x), (zh, xh) = sleep, held_out
    with torch.no_grad():
        targets, _ = regression_targets(model, z, x, estimator)
        targets_h, stats_h = regression_targets(model, zh, xh, estimator)
    phi_fit = kernel.features(x.detach()).to(KRR_DTYPE)
    phi_held = kernel.features(xh.detach()).to(KRR_DTYPE)
    lam_t = lam if isinstance(lam, torch.Tensor) else torch.tensor(float(lam))
    lam_t = lam_t.to(dtype=KRR_DTYPE, device=phi_fit.device)
    coef = ridge_solve(
        kernel.gram_features(phi_fit), targets.to(KRR_DTYPE), lam_t, backend=kernel.backend
    )
    return held_out_error(kernel, phi_fit, phi_held, coef, targets_h, stats_h)


def held_out_error(
    kernel: Kernel,
    phi_fit: torch.Tensor,
    phi_held: torch.Tensor,
    coef: torch.Tensor,
    targets_held: torch.Tensor,
    stats_held: torch.Tensor | None,
) -> torch.Tensor:
    """Mean squared error of the log joint predicted at held-out points from KRR coefficients
    ``coef`` = (K + λI)⁻¹ T fitted on ``phi_fit`` (exponential family: η̂·S(x') − ψ̂)."""
    pred = kernel.gram_matmul_features(phi_held, phi_fit, coef)
    t_h = targets_held.to(KRR_DTYPE)
    if stats_held is None:
        err = pred[:, 0] - t_h[:, 0]
    else:
        s_h = stats_held.to(KRR_DTYPE)
        err = ((pred[:, 1:] - t_h[:, 1:]) * s_h).sum(-1) - (pred[:, 0] - t_h[:, 0])
    return err.square().mean()
