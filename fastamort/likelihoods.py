"""Exponential-family likelihood helpers: S(x), η, Ψ and log h for common observation models.

Each helper maps the decoder's output for a batch of latents to the quantities of
p(x|z) = h(x)·exp(η·S(x) − Ψ), with observations flattened to (n, D):

================  =========  ===================  ==============================  ==============
likelihood        S(x)       η                    Ψ                               log h(x)
================  =========  ===================  ==============================  ==============
Gaussian          (x, x²)    (μ/σ², −1/(2σ²))     Σ μ²/(2σ²) + ½ log(2πσ²)        0
Bernoulli         x          logits               Σ softplus(logits)              0
Poisson           x          log rate             Σ rate   (sign: +, unlike the   −Σ log x!
                                                  authors' Likelihoods.py)
================  =========  ===================  ==============================  ==============
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._checks import check_positive
from .ops.standard_normal import standard_normal_like


def flat(x: torch.Tensor) -> torch.Tensor:
    """(n, *shape) → (n, D), D = prod(shape); also for n = 0 (no samples)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


class GaussianLikelihood(nn.Module):
    """N(x; μ, σ²) with a learned log σ: one per dimension (``dim``) or shared (``dim=None``)."""

    def __init__(self, dim: int | None = None, init_std: float = 1.0):
        super().__init__()
        shape = () if dim is None else (dim,)
        init_std = check_positive(init_std, "init_std")
        self.log_std = nn.Parameter(torch.full(shape, math.log(init_std)))

    def variance(self) -> torch.Tensor:
        return torch.exp(2.0 * self.log_std)

    @staticmethod
    def sufficient_stats(x: torch.Tensor) -> torch.Tensor:
        x = flat(x)
        return torch.cat([x, x * x], dim=-1)

    def natural_params(self, mean: torch.Tensor) -> torch.Tensor:
        mean = flat(mean)
        precision = torch.exp(-2.0 * self.log_std).expand(mean.shape[-1])  # (D,)
        return torch.cat([mean * precision, (-0.5 * precision).expand_as(mean)], dim=-1)

    def log_normaliser(self, mean: torch.Tensor) -> torch.Tensor:
        # ½ Σ_d μ_d²/σ_d² + ½ Σ_d log(2πσ_d²): the second sum is the same for every row, and
        # the first is one matrix-vector product (no n × D temporaries beyond μ²)
        mean = flat(mean)
        d = mean.shape[-1]
        half_precision = 0.5 * torch.exp(-2.0 * self.log_std).expand(d)
        log_term = (0.5 * math.log(2 * math.pi) + self.log_std).expand(d).sum()
        return (mean * mean) @ half_precision + log_term

    @staticmethod
    def log_base_measure(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def sample(self, mean: torch.Tensor) -> torch.Tensor:
        """μ + σ·ε, ε from :func:`fastamort.ops.standard_normal_like` (the engine's parallel
        generator on CPU)."""
        return mean + torch.exp(self.log_std) * standard_normal_like(mean)


class BernoulliLikelihood(nn.Module):
    """Bernoulli(x; sigmoid(logits)) on {0, 1} observations."""

    @staticmethod
    def sufficient_stats(x: torch.Tensor) -> torch.Tensor:
        return flat(x)

    @staticmethod
    def natural_params(logits: torch.Tensor) -> torch.Tensor:
        return flat(logits)

    @staticmethod
    def log_normaliser(logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(flat(logits)).sum(-1)

    @staticmethod
    def log_base_measure(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    @staticmethod
    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(logits))


class PoissonLikelihood(nn.Module):
    """Poisson(x; exp(log_rate)) on counts."""

    @staticmethod
    def sufficient_stats(x: torch.Tensor) -> torch.Tensor:
        return flat(x)

    @staticmethod
    def natural_params(log_rate: torch.Tensor) -> torch.Tensor:
        return flat(log_rate)

    @staticmethod
    def log_normaliser(log_rate: torch.Tensor) -> torch.Tensor:
        return torch.exp(flat(log_rate)).sum(-1)

    @staticmethod
    def log_base_measure(x: torch.Tensor) -> torch.Tensor:
        return -torch.lgamma(flat(x) + 1.0).sum(-1)

    @staticmethod
    def sample(log_rate: torch.Tensor) -> torch.Tensor:
        return torch.poisson(torch.exp(log_rate))
