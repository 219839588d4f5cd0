"""An MLP image generator: z ~ N(0, I_k), x | z ~ Bernoulli or Gaussian with an MLP decoder.

The image model of the paper's image-generation experiment (PAPER.md §5.4), at the size of
small images (e.g. 8×8 digits): a standard-normal latent of dimension k, an MLP with tanh
hidden layers mapping z to one output per pixel, and

* ``likelihood="bernoulli"``: x ∈ {0, 1}^D, x_d ~ Bernoulli(sigmoid(a_d)), a = MLP(z) the
  logits; natural parameters η = a, S(x) = x, Ψ = Σ softplus(a);
* ``likelihood="gaussian"``: x ∈ ℝ^D, x_d ~ N(μ_d, σ²), μ = sigmoid(MLP(z)) in (0, 1) (the
  continuous images live in [0, 1]; the authors' DCGAN ends in tanh on [−1, 1]), with a learned
  noise σ shared by all pixels (``noise="shared"``, as in the authors' code) or one per pixel
  (``noise="per_pixel"``); S(x) = (x, x²), η = (μ/σ², −1/(2σ²)).

Both are exponential families in x, so the model provides ``sufficient_stats``,
``natural_params``, ``log_normaliser``, ``log_prior`` and ``log_base_measure`` and the
amortised estimator uses its lower-variance exponential-family form. ``obs_dim`` and
``latent_dim`` let :func:`fastamort.baselines.encoder_for` build a matching Gaussian encoder.
Observations may be passed flat (n, D) or as images (n, H, W); they are flattened inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..likelihoods import BernoulliLikelihood, GaussianLikelihood, flat
from ._args import check_count
from .base import ExpFamModel, likelihood_targets, overrides

LIKELIHOODS = ("bernoulli", "gaussian")
NOISE = ("shared", "per_pixel")


class MLPGenerator(ExpFamModel):
    """Gaussian latent, MLP decoder, Bernoulli or Gaussian pixels.

    Args:
        obs_dim: D, pixels per image (64 for 8×8 digits).
        latent_dim: k, the latent dimension (prior N(0, I_k)).
        hidden: widths of the decoder's tanh hidden layers (``()``: a linear decoder).
        likelihood: "bernoulli" (binary images) or "gaussian" (continuous images in [0, 1]).
        noise: Gaussian only: "shared" (one learned σ) or "per_pixel" (D learned σ's).
        init_std: Gaussian only: the initial σ.

    Shapes: ``sample(n)`` gives z (n, k) and x (n, D); ``log_joint(z, x)`` is (n,).

    Example:
        >>> import torch
        >>> from fastamort.models.image_generator import MLPGenerator
        >>> _ = torch.manual_seed(0)
        >>> gen = MLPGenerator(64, 8, hidden=(32,), likelihood="bernoulli")
        >>> z, x = gen.sample(5)
        >>> tuple(z.shape), tuple(x.shape), tuple(gen.log_joint(z, x).shape)
        ((5, 8), (5, 64), (5,))
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (128, 128),
        likelihood: str = "bernoulli",
        noise: str = "shared",
        init_std: float = 0.3,
    ):
        super().__init__()
        self.obs_dim = check_count(obs_dim, "obs_dim")
        self.latent_dim = check_count(latent_dim, "latent_dim")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden: expected a sequence of layer widths, got {hidden!r}")
        hidden = tuple(check_count(h, "hidden") for h in hidden)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {likelihood!r}")
        if noise not in NOISE:
            raise ValueError(f"noise: expected one of {NOISE}, got {noise!r}")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std: expected a positive finite number, got {init_std!r}")
        self.hidden, self.likelihood_name, self.noise = hidden, likelihood, noise
        layers: list[nn.Module] = []
        d = self.latent_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        layers.append(nn.Linear(d, self.obs_dim))
        self.net = nn.Sequential(*layers)
        if likelihood == "bernoulli":
            self.likelihood: nn.Module = BernoulliLikelihood()
        else:
            self.likelihood = GaussianLikelihood(
                None if noise == "shared" else self.obs_dim, init_std=float(init_std)
            )

    # ----------------------------------------------------------------------------------
    def _check_z(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z: expected shape (n, {self.latent_dim}), got {got}")
        return z

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The MLP's output, (n, D): logits (Bernoulli) or pre-sigmoid means (Gaussian)."""
        return self.net(self._check_z(z))

    def _param(self, z: torch.Tensor) -> torch.Tensor:
        """What the likelihood takes: logits (Bernoulli) or means in (0, 1) (Gaussian)."""
        out = self.decoder_output(z)
        return out if self.likelihood_name == "bernoulli" else torch.sigmoid(out)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z], (n, D): pixel probabilities (Bernoulli) or Gaussian means."""
        out = self.decoder_output(z)
        return torch.sigmoid(out)

    def sample_latent(self, n: int) -> torch.Tensor:
        """z ~ N(0, I_k), (n, k), in the parameters' dtype and device."""
        p = self.net[-1].weight
        return torch.randn(check_count(n, "n", 0), self.latent_dim, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (n, k), x (n, D)) drawn from the model."""
        z = self.sample_latent(n)
        return z, self.likelihood.sample(self._param(z))

    # exponential-family form -----------------------------------------------------------
    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        """S(x): x (Bernoulli, (n, D)) or (x, x²) (Gaussian, (n, 2D))."""
        return self.likelihood.sufficient_stats(self._check_x(x))

    def natural_params(self, z: torch.Tensor) -> torch.Tensor:
        """η_θ(z), the same width as S(x)."""
        return self.likelihood.natural_params(self._param(z))

    def log_normaliser(self, z: torch.Tensor) -> torch.Tensor:
        """Ψ_θ(z), (n,)."""
        return self.likelihood.log_normaliser(self._param(z))

    def expfam_targets(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ψ_θ(z) − log p(z) (n,), η_θ(z)) from one pass of the network."""
        if overrides(self, MLPGenerator, "natural_params", "log_normaliser"):
            return super().expfam_targets(z)
        return likelihood_targets(self.likelihood, self._param(z), self.log_prior(z))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I_k), (n,)."""
        z = self._check_z(z)
        return -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def log_base_measure(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.log_base_measure(self._check_x(x))

    def log_likelihood_given_z(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p_θ(x | z), (n,)."""
        return self.log_joint(z, x) - self.log_prior(z)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise ValueError(f"x: expected a tensor of shape (n, {self.obs_dim}) or (n, H, W)")
        xf = flat(x)
        if xf.shape[1] != self.obs_dim:
            raise ValueError(
                f"x: expected {self.obs_dim} pixels per image, got shape {tuple(x.shape)}"
            )
        return xf

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}, "
            f"likelihood={self.likelihood_name!r}, noise={self.noise!r}"
        )
