"""A latent on the unit circle: a ~ U[0, 2π), z = (cos a, sin a), x = W z + b + ε, ε ~ N(0, σ²I).

A non-Euclidean latent (the estimator never looks inside z). log p(x) is computed by
quadrature over the angle, accurate enough to measure learning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihoods import GaussianLikelihood
from ._args import check_count, check_positive
from .base import GaussianObservationModel


class CircleModel(GaussianObservationModel):
    """Linear-Gaussian observations of a point on the unit circle."""

    def __init__(self, obs_dim: int, *, init_std: float = 1.0, weight_scale: float = 1.0):
        super().__init__()
        obs_dim = check_count(obs_dim, "obs_dim")
        weight_scale = check_positive(weight_scale, "weight_scale", allow_zero=True)
        self.obs_dim = obs_dim
        self.weight = nn.Parameter(weight_scale * torch.randn(obs_dim, 2))
        self.bias = nn.Parameter(torch.zeros(obs_dim))
        self.likelihood = GaussianLikelihood(None, init_std=init_std)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias

    def sample_latent(self, n: int) -> torch.Tensor:
        a = 2 * math.pi * torch.rand(n, dtype=self.weight.dtype, device=self.weight.device)
        return torch.stack([a.cos(), a.sin()], dim=-1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        # uniform angle: density 1/(2π) with respect to arc length
        return torch.full(z.shape[:1], -math.log(2 * math.pi), dtype=z.dtype, device=z.device)

    def exact_log_likelihood(self, x: torch.Tensor, n_angles: int = 720) -> torch.Tensor:
        """Mean log p_θ(x) by the trapezoid rule over the angle (exponentially accurate)."""
        a = torch.arange(n_angles, dtype=x.dtype, device=x.device) * (2 * math.pi / n_angles)
        z = torch.stack([a.cos(), a.sin()], dim=-1)
        mu = self.mean(z)  # (A, D)
        var = self.likelihood.variance()
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        log_comp = -0.5 * d2 / var - 0.5 * self.obs_dim * torch.log(2 * math.pi * var)
        return (torch.logsumexp(log_comp, dim=1) - math.log(n_angles)).mean()
