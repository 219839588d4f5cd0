"""Bernoulli matrix factorisation with non-negative weights ("beta-gamma" style, paper §5.6).

z ~ U(0, 1)^k, logits = W·logit(z) + b with W = softplus(V) ≥ 0 (D×k), x_d ~ Bernoulli(σ(logits_d)).

This is the form of the authors' benchmark (the G-Rep "beta-gamma" matrix factorisation,
the authors' run_mf.py in kevin-w-li/al-ws: p = σ(logit(z)·W + b), W ≥ 0). Choices made here:

* The latent is stored as u = logit(z) ∈ R^k, not as z: z = σ(u) is uniform on (0, 1)^k
  exactly when u is standard logistic, so :meth:`BernoulliNMF.log_prior` is the logistic
  density Σ_j [log σ(u_j) + log σ(−u_j)] (the uniform density of z times the Jacobian of
  the logit). The model is the same; u-space avoids logit(z) overflowing at z ≈ 0 or 1 in
  float32, and it makes the latent unconstrained, so a plain Gaussian encoder over u is a
  reparameterisable variational family for the VAE baseline (a Gaussian pushed through a
  sigmoid, a "logit-normal" over z: the log-Jacobians of q and of p cancel in u-space).
* W = softplus(V) (smooth, gradient never vanishes as W → 0, unlike a clamp; the authors
  used exp). The columns of W are the non-negative "factors".
* No prior on W (the authors' Gamma(0.9, 0.3) MAP term on W is left out: the learners here
  do maximum likelihood).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_int
from ..likelihoods import BernoulliLikelihood, flat
from ._args import check_count
from .base import ExpFamModel


def _inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    return w + torch.log(-torch.expm1(-w))


class BernoulliNMF(ExpFamModel):
    """Bernoulli factorisation x ~ Bernoulli(σ(W·logit(z) + b)), z ~ U(0, 1)^k, W ≥ 0.

    The latent passed to and returned by the methods is u = logit(z), shape (n, k).

    Args:
        obs_dim: D, the number of binary pixels.
        n_factors: k, the number of non-negative factors (columns of W).
        init_weight: W is initialised uniformly in [init_weight/10, init_weight] (random, so
            the factors differ from the start).
        init_bias: initial value of every b_d.
    """

    def __init__(
        self, obs_dim: int, n_factors: int, *, init_weight: float = 0.3, init_bias: float = 0.0
    ):
        super().__init__()
        self.obs_dim = check_count(obs_dim, "obs_dim")
        self.n_factors = check_count(n_factors, "n_factors")
        if not (isinstance(init_weight, (int, float)) and math.isfinite(init_weight)) or (
            init_weight <= 0
        ):
            raise ValueError(f"init_weight: expected a positive number, got {init_weight!r}")
        if not (isinstance(init_bias, (int, float)) and math.isfinite(init_bias)):
            raise ValueError(f"init_bias: expected a finite number, got {init_bias!r}")
        w0 = init_weight * (0.1 + 0.9 * torch.rand(obs_dim, n_factors))
        self.raw_weight = nn.Parameter(_inverse_softplus(w0))
        self.bias = nn.Parameter(torch.full((obs_dim,), float(init_bias)))
        self.likelihood = BernoulliLikelihood()

    @property
    def latent_dim(self) -> int:
        """k (so :func:`fastamort.baselines.encoder_for` builds a Gaussian encoder over u)."""
        return self.n_factors

    def weight(self) -> torch.Tensor:
        """W = softplus(V) ≥ 0, shape (D, k)."""
        return F.softplus(self.raw_weight)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """W·u + b for latents u = logit(z) (n, k): (n, D)."""
        return u @ self.weight().T + self.bias

    def mean(self, u: torch.Tensor) -> torch.Tensor:
        """E[x | z] = σ(logits), (n, D)."""
        return torch.sigmoid(self.logits(u))

    def sample_latent(self, n: int) -> torch.Tensor:
        """u = logit(z), z ~ U(0, 1)^k: standard logistic draws, (n, k)."""
        p = self.raw_weight
        z = torch.rand(n, self.n_factors, dtype=p.dtype, device=p.device)
        z = z.clamp(torch.finfo(p.dtype).tiny, 1.0 - torch.finfo(p.dtype).eps)
        return torch.logit(z)

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(u (n, k), x (n, D) in {0, 1})."""
        n = check_int(n, "n", 0)
        u = self.sample_latent(n)
        return u, self.likelihood.sample(self.logits(u))

    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.sufficient_stats(x)

    def natural_params(self, u: torch.Tensor) -> torch.Tensor:
        return self.likelihood.natural_params(self.logits(u))

    def log_normaliser(self, u: torch.Tensor) -> torch.Tensor:
        return self.likelihood.log_normaliser(self.logits(u))

    def log_prior(self, u: torch.Tensor) -> torch.Tensor:
        """Standard logistic density of u (= uniform z with the logit's Jacobian), (n,)."""
        return (F.logsigmoid(u) + F.logsigmoid(-u)).sum(-1)

    def log_likelihood_given(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | u), (n,)."""
        return -F.binary_cross_entropy_with_logits(
            self.logits(u), flat(x).to(u.dtype), reduction="none"
        ).sum(-1)
