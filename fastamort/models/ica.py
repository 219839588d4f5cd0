"""Independent component analysis with Laplace sources: s_i ~ Laplace(0, 1) i.i.d.,
x = A s + ε, ε ~ N(0, σ²I), with the mixing matrix A (D × K) and one σ learned.

The paper's ICA model (§5.8): a sparse (super-Gaussian) prior and a linear generator without
bias. The posterior over s is not Gaussian and log p(x) has no closed form; for a square,
invertible A the noiseless limit σ → 0 does: log p(x) = Σ_i log Laplace((A⁻¹x)_i) − log|det A|
(:meth:`LaplaceICA.noiseless_log_likelihood`, the classical ICA likelihood).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihoods import GaussianLikelihood, flat
from ._args import check_count, check_positive
from .base import GaussianObservationModel


class FlooredGaussianLikelihood(GaussianLikelihood):
    """N(x; μ, σ²) with σ² = σ_min² + exp(2·log_std): one learned scalar above a floor σ_min."""

    def __init__(self, init_std: float = 1.0, min_std: float = 0.0):
        if not init_std > min_std:
            raise ValueError(f"init_std: must exceed min_std = {min_std}, got {init_std}")
        super().__init__(None, init_std=math.sqrt(init_std**2 - min_std**2))
        self.min_std = float(min_std)

    def variance(self) -> torch.Tensor:
        return self.min_std**2 + torch.exp(2.0 * self.log_std)

    def std(self) -> torch.Tensor:
        return self.variance().sqrt()

    def sample(self, mean: torch.Tensor) -> torch.Tensor:
        return mean + self.std() * torch.randn_like(mean)


class LaplaceICA(GaussianObservationModel):
    """Linear mixing of independent Laplace(0, 1) sources with isotropic Gaussian noise.

    Args:
        obs_dim: D, the observation dimension.
        n_sources: K, the number of sources (latent dimension).
        init_std: initial noise standard deviation σ.
        weight_scale: standard deviation of the random initial mixing matrix A (N(0, s²)
            entries).
        min_std: a floor σ_min under the noise, σ² = σ_min² + exp(2·log_std) (default 0: none).
            For a square A on data without a noise level of their own, maximum likelihood
            drives σ to 0, where the amortised estimate breaks down; a floor keeps σ away.

    Shapes: latents s are (n, K), observations (n, D); ``weight`` is A, (D, K).
    """

    def __init__(
        self,
        obs_dim: int,
        n_sources: int,
        *,
        init_std: float = 1.0,
        weight_scale: float = 1.0,
        min_std: float = 0.0,
    ):
        super().__init__()
        self.obs_dim = check_count(obs_dim, "obs_dim")
        self.n_sources = check_count(n_sources, "n_sources")
        init_std = check_positive(init_std, "init_std")
        weight_scale = check_positive(weight_scale, "weight_scale")
        if isinstance(min_std, bool) or not isinstance(min_std, (int, float)):
            raise TypeError(f"min_std: expected a number, got {type(min_std).__name__}")
        if not (math.isfinite(min_std) and 0 <= min_std < init_std):
            raise ValueError(f"min_std: expected 0 <= min_std < init_std, got {min_std!r}")
        self.weight = nn.Parameter(weight_scale * torch.randn(obs_dim, n_sources))
        self.likelihood = FlooredGaussianLikelihood(init_std, float(min_std))

    @property
    def noise_std(self) -> float:
        """The current σ."""
        return float(self.likelihood.std().detach())

    @property
    def latent_dim(self) -> int:
        """K (the name :func:`fastamort.baselines.encoder_for` looks for)."""
        return self.n_sources

    @property
    def mixing(self) -> torch.Tensor:
        """A, (D, K), detached."""
        return self.weight.detach()

    def mean(self, s: torch.Tensor) -> torch.Tensor:
        """A s: (n, K) → (n, D)."""
        return s @ self.weight.T

    def sample_latent(self, n: int) -> torch.Tensor:
        w = self.weight
        u = torch.rand(n, self.n_sources, dtype=w.dtype, device=w.device)
        # inverse CDF of Laplace(0, 1): sign(u − ½)·(−log(1 − 2|u − ½|))
        c = u - 0.5
        return -torch.sign(c) * torch.log1p(-2 * c.abs())

    def log_prior(self, s: torch.Tensor) -> torch.Tensor:
        """Σ_i log Laplace(s_i; 0, 1) = Σ_i (−|s_i| − log 2), shape (n,)."""
        return -(s.abs().sum(-1)) - self.n_sources * math.log(2.0)

    def unmix(self, x: torch.Tensor) -> torch.Tensor:
        """A⁺ x, the least-squares sources: (n, D) → (n, K)."""
        return flat(x) @ torch.linalg.pinv(self.mixing).T

    def noiseless_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log p(x) of the noiseless model (σ → 0) for a square A, shape ()."""
        if self.obs_dim != self.n_sources:
            raise ValueError(
                f"noiseless_log_likelihood: needs a square mixing matrix, got D = {self.obs_dim}, "
                f"K = {self.n_sources}"
            )
        return laplace_ica_log_likelihood(self.mixing, x)


def laplace_ica_log_likelihood(mixing: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of Σ_i log Laplace((A⁻¹x)_i; 0, 1) − log|det A|, A square (D, D)."""
    x = flat(x).to(mixing.dtype)
    s = torch.linalg.solve(mixing, x.T).T
    _, logdet = torch.linalg.slogdet(mixing)
    return (-(s.abs().sum(-1)) - s.shape[1] * math.log(2.0)).mean() - logdet
