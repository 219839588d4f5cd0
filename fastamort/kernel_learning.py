"""Kernel learning: the KRR prediction error of the log joint on held-out sleep samples.

The estimator is only as good as the regression of the log joint (or its exponential-family
parts) on x. :func:`kernel_loss` fits the KRR on one sleep set and scores it on a separate,
held-out sleep set — the authors' criterion, with the per-sample error (five of their
notebooks averaged the prediction first, AUTHORS_CODE.md §6.1). It is differentiable w.r.t.
the kernel's lengthscale and feature network and w.r.t. λ, through ``gram``,
``ridge_solve`` and ``gram_matmul``; the targets are detached (the model is not trained here).

With ``solver="nystrom"`` or ``"rff"`` the regression is the same low-rank one the estimator
runs (primal ridge on Nyström or random Fourier features, differentiable, O(M r²) time and, by
activation checkpointing over row chunks, O(r² + chunk·r) memory). ``solver="cg"`` scores the
cheaper Nyström surrogate with ``n_inducing`` points (its preconditioner's approximation): a
CG solve would need a backward solve per step and O(M²) work per iteration.
"""

from __future__ import annotations

from typing import Any

import torch

from .estimator import KRR_DTYPE, check_lam, check_sleep, regression_targets, resolve_estimator
from .kernels import Kernel
from .models.base import check_model
from .solvers import SolverConfig, feature_ridge_predict, nystrom_feature_map
from .solvers.exact import exact_solve
from .solvers.rff import RandomFourierFeatures


def kernel_loss(
    model: torch.nn.Module,
    kernel: Kernel,
    sleep: tuple[Any, torch.Tensor],
    held_out: tuple[Any, torch.Tensor],
    lam: float | torch.Tensor,
    *,
    estimator: str = "auto",
    solver: str = "exact",
    n_inducing: int | None = None,
    n_features: int | None = None,
    inducing: str = "uniform",
) -> torch.Tensor:
    """Mean squared error of the KRR-predicted log joint at held-out sleep samples.

    Args:
        model: the generative model (its targets are evaluated without gradient).
        kernel: the kernel to score (gradients flow to its parameters); one without a
            lengthscale gets the median heuristic on ``sleep``'s x, in place. A feature
            network's BatchNorm statistics are set to those of ``sleep``'s x (in place), then
            frozen: both sets are featurised in eval mode.
        sleep: ``(z, x)`` the regression is fitted on, M samples.
        held_out: ``(z', x')`` it is scored on, M' samples.
        lam: ridge λ > 0 (a tensor that requires grad to learn it).
        estimator: which regression the estimator will run ("auto", "generic", "expfam").
        solver: "exact", "nystrom", "rff", or "cg" (scored by its Nyström surrogate).
        n_inducing, n_features, inducing: as for :func:`fastamort.amortised_objective`.

    Returns:
        0-d float64 tensor.
    """
    check_model(model)
    estimator = resolve_estimator(model, estimator)
    config = SolverConfig(solver, n_inducing, n_features, None, inducing)
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel: expected a fastamort.kernels.Kernel, got {type(kernel).__name__}")
    z, x = check_sleep(sleep, model, "sleep", 1)
    zh, xh = check_sleep(held_out, model, "held_out", 1)
    if xh.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"held_out: observations of shape {tuple(xh.shape[1:])} do not match sleep's "
            f"{tuple(x.shape[1:])}"
        )
    lam = check_lam(lam)
    if not bool(kernel.initialised):
        kernel.init_from(x)  # median heuristic on the fitting set, as the estimator does
    else:
        kernel.calibrate_batch_norm(x)  # BatchNorm statistics follow the current sleep set
    with torch.no_grad():
        targets, _ = regression_targets(model, z, x, estimator)
        targets_h, stats_h = regression_targets(model, zh, xh, estimator)
    phi_fit = kernel.features(x).to(KRR_DTYPE)
    phi_held = kernel.features(xh).to(KRR_DTYPE)
    lam_t = lam if isinstance(lam, torch.Tensor) else torch.tensor(lam)
    lam_t = lam_t.to(dtype=KRR_DTYPE, device=phi_fit.device)
    if config.solver == "exact":
        k_fit = kernel.gram_features(phi_fit)
        coef = exact_solve(k_fit, targets.to(KRR_DTYPE), lam_t, kernel.backend)
        return held_out_error(kernel, phi_fit, phi_held, coef, targets_h, stats_h)
    if config.solver == "rff":
        feature_map = RandomFourierFeatures(
            kernel, phi_fit.shape[1], config.features, device=phi_fit.device
        )
        rank = config.features
    else:
        feature_map, rank, _ = nystrom_feature_map(
            kernel,
            phi_fit,
            min(config.rank, phi_fit.shape[0]),
            config.inducing,
            differentiable=True,
        )
    pred = feature_ridge_predict(
        feature_map,
        phi_fit,
        phi_held,
        targets.to(KRR_DTYPE),
        lam_t,
        rank=rank,
        backend=kernel.backend,
    )
    return prediction_error(pred, targets_h, stats_h)


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
    return prediction_error(pred, targets_held, stats_held)


def prediction_error(
    pred: torch.Tensor, targets_held: torch.Tensor, stats_held: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error of the log joint from predicted targets ``pred`` (M', 1 + P)."""
    t_h = targets_held.to(KRR_DTYPE)
    if stats_held is None:
        err = pred[:, 0] - t_h[:, 0]
    else:
        s_h = stats_held.to(KRR_DTYPE)
        err = ((pred[:, 1:] - t_h[:, 1:]) * s_h).sum(-1) - (pred[:, 0] - t_h[:, 0])
    return err.square().mean()
