"""Hierarchical mixture: a Gaussian mixture in a 2-d latent space warped by a small network.

c ~ Cat(softmax α),  z | c ~ N(μ_c, Σ_c) in R^d,  x | z ~ N(f_θ(z), diag σ²),

with f_θ an MLP d → h → D (ReLU), Σ_c = L_c L_cᵀ (L_c lower triangular, positive diagonal).
This is the "PinWheelGMM" structure of the paper's hierarchical experiment (§5.7; K = 10,
d = D = 2, h = 20). The latent is the tuple ``(c, z)``: c a long tensor (n,), z (n, d). Only
x | z enters the likelihood, a Gaussian, so the model is an exponential family in x with
S(x) = (x, x²); the prior log p(c, z) = log π_c + log N(z; μ_c, Σ_c) carries the gradients of
α, μ and L (the estimator treats (c, z) as constants, no reparameterisation).

Choices: σ_d = ``min_std`` + exp(s_d) (a floor, so the noise cannot collapse to zero and the
importance-sampling evaluation stays usable), L_c's diagonal = ``min_scale`` + softplus(·).
The authors' MAP priors on α, μ and Σ (their Pinwheel notebooks in kevin-w-li/al-ws) are not
used: maximum likelihood.
:func:`fastamort.baselines.encoder_for` does not apply (the latent is a tuple).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_int
from ..likelihoods import flat
from ._args import check_count, check_positive
from .base import ExpFamModel, sample_categorical


class HierarchicalMixture(ExpFamModel):
    """Mixture of full-covariance Gaussians in a latent space, pushed through an MLP.

    Args:
        obs_dim: D, the observation dimension.
        n_clusters: K, the number of mixture components.
        latent_dim: d, the dimension of the continuous latent z.
        hidden: h, the width of the MLP's hidden layer (ReLU).
        init_std: initial observation noise σ (all dimensions).
        min_std: floor of σ.
        mean_scale: the component means μ_c start as N(0, mean_scale² I).
        init_scale: Σ_c starts as init_scale² I.
        min_scale: floor of the diagonal of L_c.
    """

    def __init__(
        self,
        obs_dim: int = 2,
        n_clusters: int = 10,
        *,
        latent_dim: int = 2,
        hidden: int = 20,
        init_std: float = math.exp(-1.0),
        min_std: float = 0.01,
        mean_scale: float = 1.0,
        init_scale: float = 0.5,
        min_scale: float = 1e-3,
    ):
        super().__init__()
        self.obs_dim = check_count(obs_dim, "obs_dim")
        self.n_clusters = check_count(n_clusters, "n_clusters")
        self.latent_dim = check_count(latent_dim, "latent_dim")
        hidden = check_count(hidden, "hidden")
        init_std = check_positive(init_std, "init_std")
        self.min_std = check_positive(min_std, "min_std", allow_zero=True)
        mean_scale = check_positive(mean_scale, "mean_scale", allow_zero=True)
        init_scale = check_positive(init_scale, "init_scale")
        self.min_scale = check_positive(min_scale, "min_scale", allow_zero=True)
        if init_std <= self.min_std:
            raise ValueError(f"init_std: must exceed min_std={min_std}, got {init_std}")
        if init_scale <= self.min_scale:
            raise ValueError(f"init_scale: must exceed min_scale={min_scale}, got {init_scale}")
        k, d = self.n_clusters, self.latent_dim
        self.logits = nn.Parameter(torch.zeros(k))
        self.means = nn.Parameter(mean_scale * torch.randn(k, d))
        diag = math.log(math.expm1(init_scale - self.min_scale))  # softplus⁻¹
        self.raw_scale_tril = nn.Parameter(torch.diag_embed(torch.full((k, d), diag)))
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim))
        self.raw_std = nn.Parameter(torch.full((obs_dim,), math.log(init_std - self.min_std)))

    # -- parameters ------------------------------------------------------------------------
    def mixing_weights(self) -> torch.Tensor:
        """π = softmax(α), (K,)."""
        return torch.softmax(self.logits, 0)

    def scale_tril(self) -> torch.Tensor:
        """L_c, (K, d, d): lower triangular with diagonal ≥ ``min_scale``."""
        raw = self.raw_scale_tril
        strict = torch.tril(raw, diagonal=-1)
        diag = self.min_scale + F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1))
        return strict + torch.diag_embed(diag)

    def std(self) -> torch.Tensor:
        """σ, (D,)."""
        return self.min_std + torch.exp(self.raw_std)

    def component(self) -> torch.distributions.MultivariateNormal:
        """The K latent Gaussians N(μ_c, Σ_c) as one batched distribution."""
        return torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """f_θ(z): (..., d) → (..., D)."""
        return self.net(z)

    # -- protocol ----------------------------------------------------------------------------
    def _split(self, latent: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(latent, (tuple, list)) and len(latent) == 2):
            raise TypeError(
                "z: HierarchicalMixture's latent is a tuple (c (n,) long, z (n, d)), got "
                f"{type(latent).__name__}"
            )
        c, z = latent
        return c, z

    def sample_latent(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c (n,), z (n, d)) from the prior."""
        c = sample_categorical(self.mixing_weights().detach(), n)
        eps = torch.randn(n, self.latent_dim, dtype=self.means.dtype, device=self.means.device)
        z = self.means[c] + (self.scale_tril()[c] @ eps[:, :, None])[:, :, 0]
        return c, z

    @torch.no_grad()
    def sample(self, n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """((c, z), x (n, D))."""
        n = check_int(n, "n", 0)
        c, z = self.sample_latent(n)
        mu = self.decode(z)
        return (c, z), mu + self.std() * torch.randn_like(mu)

    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        x = flat(x)
        return torch.cat([x, x * x], dim=-1)

    def natural_params(self, latent: object) -> torch.Tensor:
        _, z = self._split(latent)
        mu, var = self.decode(z), self.std() ** 2
        return torch.cat([mu / var, (-0.5 / var).expand_as(mu)], dim=-1)

    def log_normaliser(self, latent: object) -> torch.Tensor:
        _, z = self._split(latent)
        mu, var = self.decode(z), self.std() ** 2
        return (0.5 * mu * mu / var + 0.5 * torch.log(2 * math.pi * var)).sum(-1)

    def log_prior(self, latent: object) -> torch.Tensor:
        """log π_c + log N(z; μ_c, Σ_c), (n,)."""
        c, z = self._split(latent)
        logpi = torch.log_softmax(self.logits, 0)[c]
        diff = z - self.means[c]
        scale = self.scale_tril()[c]
        u = torch.linalg.solve_triangular(scale, diff[:, :, None], upper=False)[:, :, 0]
        logdet = torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
        return (
            logpi - 0.5 * (u * u).sum(-1) - logdet - 0.5 * self.latent_dim * math.log(2 * math.pi)
        )

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_log_likelihoods(self, x: torch.Tensor, n_samples: int = 2000,
                                chunk: int = 256) -> torch.Tensor:  # fmt: skip
        """log π_c + log p(x | c) for every datum and cluster, (N, K).

        p(x | c) = E_{z ~ N(μ_c, Σ_c)}[N(x; f(z), σ²)] by importance sampling with the prior
        of each cluster as the proposal (``n_samples`` draws per cluster, shared by all data):
        adequate in a 2-d latent; the estimate of log p(x|c) is biased low by O(1/n_samples).
        """
        n_samples = check_count(n_samples, "n_samples")
        x = flat(x).to(self.means.dtype)
        k, d = self.n_clusters, self.latent_dim
        eps = torch.randn(k, n_samples, d, dtype=self.means.dtype, device=self.means.device)
        z = self.means[:, None, :] + (self.scale_tril()[:, None] @ eps[..., None])[..., 0]
        mu = self.decode(z)  # (K, S, D)
        var = self.std() ** 2
        const = -0.5 * torch.log(2 * math.pi * var).sum()
        out = []
        for x_part in x.split(chunk):
            d2 = ((x_part[:, None, None, :] - mu[None]) ** 2 / var).sum(-1)  # (n, K, S)
            out.append(torch.logsumexp(-0.5 * d2, dim=-1) - math.log(n_samples) + const)
        return torch.cat(out) + torch.log_softmax(self.logits, 0)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, n_samples: int = 2000) -> torch.Tensor:
        """Importance-sampled log p_θ(x), (N,), enumerating the clusters."""
        return torch.logsumexp(self.cluster_log_likelihoods(x, n_samples), dim=-1)
