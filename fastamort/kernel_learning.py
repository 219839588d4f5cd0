"""Kernel learning: the KRR prediction error of the log joint on held-out sleep samples.

The estimator is only as good as the regression of the log joint (or its exponential-family
parts) on x. :func:`kernel_loss` fits the KRR on one sleep set and scores it on a separate,
held-out sleep set — the authors' criterion, with the per-sample error (five of their
notebooks in kevin-w-li/al-ws averaged the prediction first). It is differentiable w.r.t.
the kernel's lengthscale and feature network and w.r.t. λ, through ``gram``,
``ridge_solve`` and ``gram_matmul``; the targets are detached (the model is not trained here).

Every variant solves against whichever side has fewer columns: the 1 + P targets, or the
cross Gram to the M' held-out points (:func:`fastamort.solvers.solve_against_gram`; equal in
exact arithmetic). With ``solver="nystrom"`` or ``"rff"`` the regression is the same low-rank
one the estimator runs (primal ridge on Nyström or random Fourier features, differentiable,
O(M r²) time and, by activation checkpointing over row chunks, O(r² + chunk·r) memory).
``solver="cg"`` scores the cheaper Nyström surrogate with ``n_inducing`` points (its
preconditioner's approximation): a CG solve would need a backward solve per step and O(M²)
work per iteration.
"""

from __future__ import annotations

from typing import Any

import torch

from .estimator import (
    KRR_DTYPE,
    check_lam_scalar,
    check_sleep,
    regression_parts,
    regression_targets,
    resolve_estimator,
    solve_dtype,
    stacked_targets,
)
from .kernels import Kernel
from .models.base import check_model
from .solvers import (
    SolverConfig,
    feature_ridge_predict,
    nystrom_feature_map,
    solve_against_gram,
    solver_config,
)
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
    solver: str | SolverConfig = "exact",
    n_inducing: int | None = None,
    n_features: int | None = None,
    inducing: str | None = None,
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
        solver: "exact", "nystrom", "rff", or "cg" (scored by its Nyström surrogate), or a
            :class:`fastamort.solvers.SolverConfig`.
        n_inducing, n_features, inducing: as for :func:`fastamort.amortised_objective`.

    Returns:
        0-d float64 tensor.
    """
    check_model(model)
    estimator = resolve_estimator(model, estimator)
    config = solver_config(solver, n_inducing, n_features, None, inducing)
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel: expected a fastamort.kernels.Kernel, got {type(kernel).__name__}")
    z, x = check_sleep(sleep, model, "sleep", 1)
    zh, xh = check_sleep(held_out, model, "held_out", 1)
    if xh.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"held_out: observations of shape {tuple(xh.shape[1:])} do not match sleep's "
            f"{tuple(x.shape[1:])}"
        )
    lam = check_lam_scalar(lam)
    if not bool(kernel.initialised):
        kernel.init_from(x)  # median heuristic on the fitting set, as the estimator does
    else:
        kernel.calibrate_batch_norm(x)  # BatchNorm statistics follow the current sleep set
    with torch.no_grad():
        targets = stacked_targets(*regression_parts(model, z, x, estimator))
        targets_h, stats_h = regression_targets(model, zh, xh, estimator)
    phi_fit = kernel.features(x)
    lam_value = float(lam.detach()) if isinstance(lam, torch.Tensor) else lam
    dtype = solve_dtype(config, phi_fit, lam_value, kernel)
    phi_fit = phi_fit.to(dtype)
    phi_held = kernel.features(xh).to(dtype)
    lam_t = lam if isinstance(lam, torch.Tensor) else torch.tensor(lam)
    lam_t = lam_t.to(dtype=dtype, device=phi_fit.device)
    if config.solver == "exact":
        k_fit = kernel.gram_features(phi_fit)
        if solve_against_gram(targets.shape[1], phi_held.shape[0]):
            solved = exact_solve(
                k_fit, kernel.gram_features(phi_fit, phi_held), lam_t, kernel.backend
            )
            loss = solved_held_out_error(solved, targets, targets_h, stats_h)
        else:
            coef = exact_solve(k_fit, targets.to(dtype), lam_t, kernel.backend)
            loss = held_out_error(kernel, phi_fit, phi_held, coef, targets_h, stats_h)
        return loss.to(KRR_DTYPE)
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


def solved_held_out_error(
    solved: torch.Tensor,
    targets: torch.Tensor,
    targets_held: torch.Tensor,
    stats_held: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`held_out_error` from A = (K + λI)⁻¹ K_fh (M, M') instead of the coefficients:
    the prediction at held-out point i is Σ_j A_ji T_j, so its error is
    Σ_j A_ji (T_j·s_i) − T'_i·s_i with s_i = :func:`error_weights`. The M × M' matrix
    Q = T sᵀ has no gradient, so the backward pass needs no product with the 1 + P targets."""
    dtype = solved.dtype
    weights = error_weights(targets_held, stats_held, dtype)  # (M', 1 + P)
    with torch.no_grad():
        q = targets.detach().to(dtype) @ weights.mT  # (M, M')
        offset = (targets_held.to(dtype) * weights).sum(-1)
    return ((solved * q).sum(0) - offset).square().mean()


def error_weights(
    targets_held: torch.Tensor, stats_held: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """s (M', 1 + P) with the log-joint error (T̂ − T)·s: [1] for the generic estimator (one
    target, the log joint), [−1, S(x')] for the exponential family (η̂·S(x') − ψ̂)."""
    if stats_held is None:
        return torch.ones_like(targets_held, dtype=dtype)
    s_h = stats_held.detach().to(dtype)
    return torch.cat([-torch.ones_like(s_h[:, :1]), s_h], 1)


def prediction_error(
    pred: torch.Tensor, targets_held: torch.Tensor, stats_held: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error of the log joint from predicted targets ``pred`` (M', 1 + P)."""
    weights = error_weights(targets_held, stats_held, pred.dtype)
    err = ((pred - targets_held.to(pred.dtype)) * weights).sum(-1)
    return err.square().mean()
