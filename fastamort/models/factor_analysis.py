"""Factor analysis x = W z + b + ε, z ~ N(0, I_k), ε ~ N(0, diag(σ²)): exact log p(x) known.

log p(x) = log N(x; b, W Wᵀ + diag(σ²)) is computed by torch's ``LowRankMultivariateNormal``, so
its gradient (by autograd) is the exact ML gradient that the amortised estimate is tested
against.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihoods import GaussianLikelihood
from ._args import check_count, check_positive
from .base import GaussianObservationModel


class FactorAnalysis(GaussianObservationModel):
    """Linear-Gaussian latent model with per-dimension noise.

    Args:
        obs_dim: D, the observation dimension.
        latent_dim: k, the latent dimension.
        init_std: initial noise standard deviation.
        weight_scale: standard deviation of the random initial W.
    """

    def __init__(
        self, obs_dim: int, latent_dim: int, *, init_std: float = 1.0, weight_scale: float = 1.0
    ):
        super().__init__()
        obs_dim, latent_dim = check_count(obs_dim, "obs_dim"), check_count(latent_dim, "latent_dim")
        weight_scale = check_positive(weight_scale, "weight_scale", allow_zero=True)
        self.obs_dim, self.latent_dim = obs_dim, latent_dim
        self.weight = nn.Parameter(weight_scale * torch.randn(obs_dim, latent_dim))
        self.bias = nn.Parameter(torch.zeros(obs_dim))
        self.likelihood = GaussianLikelihood(obs_dim, init_std=init_std)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias

    def sample_latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def marginal(self) -> torch.distributions.LowRankMultivariateNormal:
        """p_θ(x), exactly."""
        return torch.distributions.LowRankMultivariateNormal(
            self.bias, self.weight, self.likelihood.variance()
        )

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log p_θ(x) over the batch, differentiable (the exact ML objective)."""
        return self.marginal().log_prob(x).mean()
