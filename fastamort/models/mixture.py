"""Gaussian mixture: discrete z ∈ {0..K−1} ~ Categorical(π), x | z ~ N(μ_z, σ² I).

A discrete latent: the estimator never differentiates through z. log p(x) is exact by
enumerating the components, so the ML gradient is known.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihoods import GaussianLikelihood
from ._args import check_count, check_positive
from .base import GaussianObservationModel, sample_categorical


class GaussianMixture(GaussianObservationModel):
    """K-component isotropic Gaussian mixture with learned weights, means and one σ."""

    def __init__(
        self, obs_dim: int, n_components: int, *, init_std: float = 1.0, mean_scale: float = 2.0
    ):
        super().__init__()
        obs_dim = check_count(obs_dim, "obs_dim")
        n_components = check_count(n_components, "n_components")
        mean_scale = check_positive(mean_scale, "mean_scale", allow_zero=True)
        self.obs_dim, self.n_components = obs_dim, n_components
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(mean_scale * torch.randn(n_components, obs_dim))
        self.likelihood = GaussianLikelihood(None, init_std=init_std)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.means[z]

    def sample_latent(self, n: int) -> torch.Tensor:
        return sample_categorical(torch.softmax(self.logits, 0), n)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits, 0)[z]

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log p_θ(x) by enumerating the components."""
        var = self.likelihood.variance()
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        log_comp = -0.5 * d2 / var - 0.5 * self.obs_dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(torch.log_softmax(self.logits, 0) + log_comp, dim=1).mean()
