"""A latent neural process (Garnelo et al. 2018) and its context-conditioned view for the
amortised learner.

:class:`NeuralProcess` holds the networks:

* deterministic encoder r = mean_i h(x_i, y_i) over the context (MLP, ReLU);
* global latent p_θ(z | context) = N(μ(r), diag σ(r)²), σ = s + (1 − s)·sigmoid(·), floor s;
* decoder p_θ(y | x, z) = N(μ(x, z), σ(x, z)²), σ = s + (1 − s)·softplus(·), per target point.

The same encoder applied to context ∪ targets gives the approximate posterior
q(z | context ∪ targets) of the standard NP ELBO (:meth:`NeuralProcess.elbo`).

Amortised learning needs a latent-variable model in the protocol of
:mod:`fastamort.models.base`. Given one task's context (x_C, y_C) and target inputs x_T, the NP
is the model p_θ(z | C) p_θ(y_T | x_T, z) over the target outputs y_T: that is
:class:`ConditionalNP`, made by :meth:`NeuralProcess.condition`. It is a thin module that
holds the task's tensors as buffers and the NP as a submodule (so the parameters are shared):
``sample(n)`` draws z ~ p_θ(z | C) and y_T, with observation x = y_T flattened, (n, T·dy);
``log_joint`` = log p_θ(z | C) + log p_θ(y_T | x_T, z). The decoder is Gaussian, so the
exponential-family methods are provided (η = (μ/σ², −1/(2σ²)) per target value). Maximising
the amortised objective over tasks trains encoder and decoder by the conditional likelihood
log p_θ(y_T | x_T, C) (the authors' ``run_np.py``), with no approximate posterior.

Shapes: x_C (B, C, dx), y_C (B, C, dy), x_T (B, T, dx), z (B, S, dz) or (B, dz).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_int
from ..likelihoods import flat
from ._args import check_count
from .base import ExpFamModel


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class NeuralProcess(nn.Module):
    """Latent-variable neural process with a mean-aggregated context encoder.

    Args:
        x_dim, y_dim: input and output dimensions.
        r_dim, z_dim, h_dim: representation, latent and hidden sizes (paper: 50 each).
        min_std: floor of both standard deviations (paper: 0.1).
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        *,
        r_dim: int = 50,
        z_dim: int = 50,
        h_dim: int = 50,
        min_std: float = 0.1,
    ):
        super().__init__()
        self.x_dim, self.y_dim = check_count(x_dim, "x_dim"), check_count(y_dim, "y_dim")
        self.r_dim, self.z_dim, self.h_dim = (
            check_count(r_dim, "r_dim"),
            check_count(z_dim, "z_dim"),
            check_count(h_dim, "h_dim"),
        )
        if isinstance(min_std, bool) or not isinstance(min_std, (int, float)):
            raise TypeError(f"min_std: expected a number, got {type(min_std).__name__}")
        if not 0 <= min_std < 1:
            raise ValueError(f"min_std: must lie in [0, 1), got {min_std}")
        self.min_std = float(min_std)
        self.encoder = _mlp([x_dim + y_dim, h_dim, h_dim, r_dim])
        self.latent_head = _mlp([r_dim, h_dim, 2 * z_dim])
        self.decoder = _mlp([x_dim + z_dim, h_dim, h_dim, 2 * y_dim])

    # --- networks -------------------------------------------------------------------------
    def _check(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, names: tuple[str, str] = ("x", "y")
    ) -> None:
        """Shapes (B, points, x_dim) and (B, points, y_dim); errors use ``names``."""
        x_name, y_name = names
        if x.ndim != 3 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{x_name}: expected shape (B, points, {self.x_dim}), got {tuple(x.shape)}"
            )
        if y is not None and (
            y.ndim != 3 or y.shape[:2] != x.shape[:2] or y.shape[-1] != self.y_dim
        ):
            raise ValueError(
                f"{y_name}: expected shape {(*x.shape[:2], self.y_dim)} (one value of "
                f"{self.y_dim} per point of {x_name}), got {tuple(y.shape)}"
            )

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """r = mean_i h(x_i, y_i): (B, N, dx), (B, N, dy) → (B, r_dim)."""
        self._check(x, y)
        return self.encoder(torch.cat([x, y], -1)).mean(1)

    def latent(self, x: torch.Tensor, y: torch.Tensor) -> torch.distributions.Normal:
        """N(μ(r), σ(r)²) over z given a set of points: batch shape (B, z_dim)."""
        mu, raw = self.latent_head(self.encode(x, y)).chunk(2, -1)
        return torch.distributions.Normal(
            mu, self.min_std + (1 - self.min_std) * torch.sigmoid(raw)
        )

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of p(y | x, z): x (B, T, dx), z (B, S, dz) → (B, S, T, dy) each."""
        b, t, _ = x.shape
        s = z.shape[1]
        inp = torch.cat(
            [x[:, None].expand(b, s, t, self.x_dim), z[:, :, None].expand(b, s, t, self.z_dim)],
            -1,
        )
        mu, raw = self.decoder(inp).chunk(2, -1)
        return mu, self.min_std + (1 - self.min_std) * F.softplus(raw)

    # --- objectives and evaluation --------------------------------------------------------
    def elbo(
        self,
        x_context: torch.Tensor,
        y_context: torch.Tensor,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        n_samples: int = 1,
    ) -> torch.Tensor:
        """The NP ELBO per task, (B,): E_q log p(y_T | x_T, z) − KL(q(z | C ∪ T) ‖ p(z | C)),
        with q from the encoder on context ∪ targets, reparameterised."""
        self._check(x_context, y_context, names=("x_context", "y_context"))
        self._check(x_target, y_target, names=("x_target", "y_target"))
        prior = self.latent(x_context, y_context)
        post = self.latent(torch.cat([x_context, x_target], 1), torch.cat([y_context, y_target], 1))
        z = post.rsample((n_samples,)).transpose(0, 1)  # (B, S, dz)
        mu, std = self.decode(x_target, z)
        ll = torch.distributions.Normal(mu, std).log_prob(y_target[:, None]).sum((2, 3)).mean(1)
        return ll - torch.distributions.kl_divergence(post, prior).sum(-1)

    @torch.no_grad()
    def predictive_log_likelihood(
        self,
        x_context: torch.Tensor,
        y_context: torch.Tensor,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        n_samples: int = 1000,
        chunk: int = 500,
    ) -> torch.Tensor:
        """log p_θ(y_T | x_T, C) per task, (B,), by Monte Carlo over z ~ p_θ(z | C):
        log mean_s p(y_T | x_T, z_s) (a consistent, slightly low-biased estimate)."""
        self._check(x_context, y_context, names=("x_context", "y_context"))
        self._check(x_target, y_target, names=("x_target", "y_target"))
        prior = self.latent(x_context, y_context)
        parts = []
        for start in range(0, n_samples, chunk):
            s = min(chunk, n_samples - start)
            z = prior.sample((s,)).transpose(0, 1)
            mu, std = self.decode(x_target, z)
            parts.append(
                torch.distributions.Normal(mu, std).log_prob(y_target[:, None]).sum((2, 3))
            )
        return torch.logsumexp(torch.cat(parts, 1), 1) - math.log(n_samples)

    @torch.no_grad()
    def predict(
        self, x_context: torch.Tensor, y_context: torch.Tensor, x_target: torch.Tensor,
        n_samples: int = 500,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Mean and standard deviation of the predictive mixture p(y | x_T, C), (B, T, dy)."""
        self._check(x_context, y_context, names=("x_context", "y_context"))
        self._check(x_target, names=("x_target", ""))
        z = self.latent(x_context, y_context).sample((n_samples,)).transpose(0, 1)
        mu, std = self.decode(x_target, z)
        mean = mu.mean(1)
        var = (std**2 + mu**2).mean(1) - mean**2
        return mean, var.clamp_min(0).sqrt()

    def condition(
        self, x_context: torch.Tensor, y_context: torch.Tensor, x_target: torch.Tensor
    ) -> ConditionalNP:
        """The model over y_T for ONE task (batch size 1 in each tensor)."""
        return ConditionalNP(self, x_context, y_context, x_target)


class ConditionalNP(ExpFamModel):
    """p_θ(z | C) p_θ(y_T | x_T, z) for one task, in the learner's model protocol.

    Args:
        process: the :class:`NeuralProcess` (a submodule: its parameters are this model's).
        x_context, y_context: (1, C, dx), (1, C, dy) (or without the leading 1).
        x_target: (1, T, dx) (or (T, dx)).

    Shapes: z (n, dz); x = y_T flattened, (n, T·dy).
    """

    def __init__(
        self,
        process: NeuralProcess,
        x_context: torch.Tensor,
        y_context: torch.Tensor,
        x_target: torch.Tensor,
    ):
        super().__init__()
        if not isinstance(process, NeuralProcess):
            raise TypeError(f"process: expected a NeuralProcess, got {type(process).__name__}")
        tensors = {"x_context": x_context, "y_context": y_context, "x_target": x_target}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.ndim == 2:
                tensors[name] = t[None]
            elif t.ndim != 3 or t.shape[0] != 1:
                raise ValueError(f"{name}: expected shape (1, points, dim), got {tuple(t.shape)}")
        process._check(tensors["x_context"], tensors["y_context"], names=("x_context", "y_context"))
        process._check(tensors["x_target"], names=("x_target", ""))
        self.process = process
        for name, t in tensors.items():
            self.register_buffer(name, t.detach())
        self.n_targets = tensors["x_target"].shape[1]
        self.obs_dim = self.n_targets * process.y_dim
        self.latent_dim = process.z_dim

    def prior(self) -> torch.distributions.Normal:
        """p_θ(z | C), batch shape (1, dz)."""
        return self.process.latent(self.x_context, self.y_context)

    def decoded(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of y_T given z (n, dz), each (n, T·dy)."""
        mu, std = self.process.decode(self.x_target, z[None])
        return flat(mu[0]), flat(std[0])

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = check_int(n, "n", 0)
        z = self.prior().sample((n,))[:, 0]
        mu, std = self.decoded(z)
        return z, mu + std * torch.randn_like(mu)

    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        x = flat(x)
        return torch.cat([x, x * x], -1)

    def natural_params(self, z: torch.Tensor) -> torch.Tensor:
        mu, std = self.decoded(z)
        var = std * std
        return torch.cat([mu / var, -0.5 / var], -1)

    def log_normaliser(self, z: torch.Tensor) -> torch.Tensor:
        mu, std = self.decoded(z)
        return (0.5 * (mu / std) ** 2 + torch.log(std) + 0.5 * math.log(2 * math.pi)).sum(-1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior().log_prob(z).sum(-1)
