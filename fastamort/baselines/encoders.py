"""Amortised encoders q_φ(z|x) for the baselines: diagonal Gaussian and categorical.

Both take a batch x of shape (B, *obs_shape) (flattened to (B, D) inside) and work on
*particles*: latents of shape (S, B, *latent_shape), S samples for each of the B data.

* :class:`GaussianEncoder`: an MLP gives the mean and the log standard deviation of a
  diagonal Gaussian over a continuous latent of dimension k; samples can be reparameterised
  (the VAE and IWAE need it) or detached (RWS needs no reparameterisation).
* :class:`CategoricalEncoder`: an MLP gives the logits of a categorical over {0, …, K−1}
  (e.g. the component of a :class:`~fastamort.models.GaussianMixture`). It cannot be
  reparameterised. Instead :meth:`CategoricalEncoder.enumerate` lists all K values with
  their log-probabilities, so the VAE's ELBO is summed exactly over k (no REINFORCE);
  the IWAE's encoder gradient uses VIMCO's leave-one-out score function
  (:mod:`fastamort.baselines.iwae`); RWS needs neither.

Choices: tanh hidden layers (smooth, bounded, fine for the small models here); the
log-std is clamped to [``MIN_LOG_STD``, ``MAX_LOG_STD``] so a run-away encoder cannot
produce infinite log-weights; the last layer is initialised at zero so a fresh Gaussian
encoder is N(0, I), the prior of the models in :mod:`fastamort.models`, and a fresh
categorical encoder is uniform. ``hidden=()`` gives a linear (affine) encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MIN_LOG_STD, MAX_LOG_STD = -10.0, 5.0


def _mlp(in_dim: int, out_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        if not isinstance(h, int) or h < 1:
            raise ValueError(f"hidden: layer widths must be positive integers, got {list(hidden)}")
        layers += [nn.Linear(d, h), nn.Tanh()]
        d = h
    last = nn.Linear(d, out_dim)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def _check_dim(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _check_particles(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of samples: expected a positive integer, got {n!r}")
    return n


class Encoder(nn.Module):
    """Common interface: ``sample(x, n)``, ``log_prob(z, x)``, ``sample_and_log_prob``."""

    discrete: bool = False
    obs_dim: int

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *obs_shape) → (B, D), checking D against the encoder's input size."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"x: expected a non-empty batch (B, ...), got shape {tuple(x.shape)}")
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] != self.obs_dim:
            raise ValueError(
                f"x: {type(self).__name__} expects {self.obs_dim} features per datum, "
                f"got shape {tuple(x.shape)}"
            )
        return xf

    def sample(self, x: torch.Tensor, n: int, *, reparameterise: bool = False) -> torch.Tensor:
        """z ~ q_φ(z|x): (n, B, *latent_shape)."""
        return self.sample_and_log_prob(x, n, reparameterise=reparameterise)[0]

    def sample_and_log_prob(
        self, x: torch.Tensor, n: int, *, reparameterise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log q_φ(z|x) for particles z of shape (S, B, *latent_shape): (S, B)."""
        raise NotImplementedError


class GaussianEncoder(Encoder):
    """q_φ(z|x) = N(z; μ_φ(x), diag σ_φ(x)²), an MLP giving μ and log σ.

    Args:
        obs_dim: D, the flattened observation size.
        latent_dim: k, the latent dimension.
        hidden: widths of the tanh hidden layers (``()``: affine encoder).
    """

    discrete = False

    def __init__(self, obs_dim: int, latent_dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.obs_dim = _check_dim(obs_dim, "obs_dim")
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.net = _mlp(self.obs_dim, 2 * self.latent_dim, tuple(hidden))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each (B, k)."""
        out = self.net(self.flat(x))
        mean, log_std = out.split(self.latent_dim, dim=-1)
        return mean, log_std.clamp(MIN_LOG_STD, MAX_LOG_STD)

    @staticmethod
    def _log_density(z, mean, log_std) -> torch.Tensor:
        u = (z - mean) * torch.exp(-log_std)
        return (-0.5 * u * u - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample_and_log_prob(
        self, x: torch.Tensor, n: int, *, reparameterise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (n, B, k), log q(z|x) (n, B)); z carries the graph to φ when reparameterised."""
        n = _check_particles(n)
        mean, log_std = self(x)
        eps = torch.randn((n, *mean.shape), dtype=mean.dtype, device=mean.device)
        z = mean + torch.exp(log_std) * eps
        if not reparameterise:
            z = z.detach()
        return z, self._log_density(z, mean, log_std)

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(x)
        if z.ndim != 3 or z.shape[1:] != mean.shape:
            raise ValueError(
                f"z: expected particles of shape (S, {mean.shape[0]}, {self.latent_dim}), "
                f"got {tuple(z.shape)}"
            )
        return self._log_density(z, mean, log_std)


class CategoricalEncoder(Encoder):
    """q_φ(z|x) = Categorical(softmax(logits_φ(x))) over {0, …, K−1}.

    Args:
        obs_dim: D, the flattened observation size.
        n_categories: K.
        hidden: widths of the tanh hidden layers (``()``: affine logits).
    """

    discrete = True

    def __init__(self, obs_dim: int, n_categories: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.obs_dim = _check_dim(obs_dim, "obs_dim")
        self.n_categories = _check_dim(n_categories, "n_categories")
        self.net = _mlp(self.obs_dim, self.n_categories, tuple(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-probabilities, (B, K)."""
        return torch.log_softmax(self.net(self.flat(x)), dim=-1)

    def sample_and_log_prob(
        self, x: torch.Tensor, n: int, *, reparameterise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (n, B) long, log q(z|x) (n, B)); z is never reparameterised."""
        if reparameterise:
            raise ValueError(
                "CategoricalEncoder: a discrete latent cannot be reparameterised; use "
                "enumerate() (VAE), a score-function estimator (IWAE) or RWS"
            )
        n = _check_particles(n)
        logq = self(x)
        z = torch.multinomial(torch.exp(logq.detach()), n, replacement=True).T  # (n, B)
        return z, logq.gather(1, z.T).T

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logq = self(x)
        if z.ndim != 2 or z.shape[1] != logq.shape[0] or z.dtype not in (torch.long, torch.int):
            raise ValueError(
                f"z: expected integer particles of shape (S, {logq.shape[0]}), got "
                f"{tuple(z.shape)} {z.dtype}"
            )
        return logq.gather(1, z.T.long()).T

    def enumerate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every value with its log-probability: (z (K, B) long, log q (K, B))."""
        logq = self(x)
        k, b = self.n_categories, logq.shape[0]
        z = torch.arange(k, device=logq.device)[:, None].expand(k, b)
        return z, logq.T


def encoder_for(model: nn.Module, *, hidden: Sequence[int] = (64, 64)) -> Encoder:
    """An encoder matching ``model``: categorical if it has ``n_components`` (a mixture),
    Gaussian over ``latent_dim`` otherwise; same dtype and device as the model."""
    obs_dim = getattr(model, "obs_dim", None)
    if obs_dim is None:
        raise TypeError(f"encoder_for: {type(model).__name__} has no obs_dim attribute")
    if getattr(model, "n_components", None) is not None:
        enc: Encoder = CategoricalEncoder(obs_dim, model.n_components, hidden)
    elif getattr(model, "latent_dim", None) is not None:
        enc = GaussianEncoder(obs_dim, model.latent_dim, hidden)
    else:
        raise TypeError(
            f"encoder_for: {type(model).__name__} has neither n_components nor latent_dim; "
            "build a GaussianEncoder or CategoricalEncoder yourself"
        )
    param = next(iter(model.parameters()), None)
    if param is not None:
        enc = enc.to(device=param.device, dtype=param.dtype)
    return enc
