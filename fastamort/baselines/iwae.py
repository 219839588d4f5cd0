"""Importance-weighted auto-encoder (Burda, Grosse & Salakhutdinov 2016): the IWAE bound.

L_k(x) = E[log (1/k) Σ_s p_θ(z_s, x) / q_φ(z_s|x)],  z_1..z_k ~ q_φ(·|x) independently,

with log p_θ(x) ≥ L_{k+1}(x) ≥ L_k(x) ≥ L_1(x) = ELBO(x), L_k → log p_θ(x) as k → ∞. The
bound is computed per datum (one log-mean-exp over the k particles of each datum, never pooled
over the batch). Its θ-gradient Σ_s w̃_s ∇θ log p_θ(z_s, x) (w̃ the self-normalised weights of
the datum) is biased for finite k; the bias shrinks as k grows.

Encoder gradient: reparameterised for a :class:`~fastamort.baselines.GaussianEncoder`. For a
:class:`~fastamort.baselines.CategoricalEncoder` the samples cannot be reparameterised, and
the bound's φ-gradient uses VIMCO's score function with a leave-one-out baseline (Mnih &
Rezende 2016): the learning signal of particle s is L̂ − L̂_{−s}, where L̂_{−s} replaces
log w_s by the mean of the other log-weights. The loss's value is unchanged by the surrogate.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ._common import check_inputs, log_joint_particles, log_mean_exp
from .encoders import Encoder


def _vimco_signal(log_w: torch.Tensor) -> torch.Tensor:
    """L̂ − L̂_{−s} for log-weights (k, C), detached, shape (k, C)."""
    k = log_w.shape[0]
    lw = log_w.detach()
    mean_others = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # (k, C)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device)[:, :, None]
    loo = torch.where(eye, mean_others[:, None, :], lw[None, :, :])  # (k, k, C): row s
    return log_mean_exp(lw, 0)[None] - log_mean_exp(loo, 1)


def _log_weights(model, encoder, x, k, n_estimates):
    """log w (k, R·B) and log q: column r·B + b is estimate r of datum b."""
    b = x.shape[0]
    z, log_q = encoder.sample_and_log_prob(x, k * n_estimates, reparameterise=not encoder.discrete)
    log_w = log_joint_particles(model, z, x) - log_q  # (R·k, B), estimate-major
    to_cols = lambda t: t.reshape(n_estimates, k, b).transpose(0, 1).reshape(k, n_estimates * b)  # noqa: E731
    return to_cols(log_w), to_cols(log_q)


def iwae_bound(
    model: nn.Module,
    encoder: Encoder,
    x: torch.Tensor,
    *,
    k: int = 5,
    n_estimates: int = 1,
) -> torch.Tensor:
    """Per-datum IWAE-k bound estimate, shape (B,), the mean of ``n_estimates`` independent
    k-particle estimates (same expectation, lower variance). Differentiable in θ, and in φ
    for a Gaussian encoder (for a categorical one use :func:`iwae_loss`)."""
    x = check_inputs(model, encoder, x)
    k = check_int(k, "k", 1)
    n_estimates = check_int(n_estimates, "n_estimates", 1)
    log_w, _ = _log_weights(model, encoder, x, k, n_estimates)
    return log_mean_exp(log_w, 0).reshape(n_estimates, x.shape[0]).mean(0)


def iwae_loss(
    model: nn.Module,
    encoder: Encoder,
    x: torch.Tensor,
    *,
    k: int = 5,
    n_estimates: int = 1,
) -> torch.Tensor:
    """−(mean IWAE-k bound over the batch); its gradient trains θ and φ (VIMCO for a discrete
    encoder, which needs k ≥ 2).

    Example:
        >>> import torch
        >>> from fastamort.models import FactorAnalysis
        >>> from fastamort.baselines import GaussianEncoder, iwae_loss
        >>> _ = torch.manual_seed(0)
        >>> model, enc = FactorAnalysis(4, 2), GaussianEncoder(4, 2)
        >>> float(iwae_loss(model, enc, torch.randn(8, 4), k=5).detach()) > 0
        True
    """
    x = check_inputs(model, encoder, x)
    k = check_int(k, "k", 2 if encoder.discrete else 1)
    n_estimates = check_int(n_estimates, "n_estimates", 1)
    log_w, log_q = _log_weights(model, encoder, x, k, n_estimates)
    bound = log_mean_exp(log_w, 0)  # (R·B,)
    if encoder.discrete:
        surrogate = (_vimco_signal(log_w) * (log_q - log_q.detach())).sum(0)
        bound = bound + surrogate  # zero-valued; carries the score-function gradient to φ
    return -bound.mean()
