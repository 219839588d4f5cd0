"""Images generated from a latent on the unit circle: a ~ U[0, 2π), z = (cos a, sin a),
x = g_θ(z) + ε, ε ~ N(0, σ²I), with g_θ a multilayer perceptron and σ learned (one scalar).

The nonlinear counterpart of :class:`~fastamort.models.CircleModel`, for images such as
oriented Gabor patches (paper §5.2). log p_θ(x) is a one-dimensional integral over the
angle, computed by quadrature (:meth:`CircleGenerator.exact_log_likelihood`);
:meth:`CircleGenerator.latent_search` finds the best angle of each observation on a grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..likelihoods import GaussianLikelihood, flat
from .base import GaussianObservationModel


def angle_grid(n_angles: int, *, dtype=None, device=None) -> torch.Tensor:
    """n equally spaced angles 2πk/n, k = 0..n−1, shape (n,)."""
    return torch.arange(n_angles, dtype=dtype, device=device) * (2 * math.pi / n_angles)


def circle_point(a: torch.Tensor) -> torch.Tensor:
    """(n,) angles → (n, 2) points (cos a, sin a) on the unit circle."""
    return torch.stack([a.cos(), a.sin()], dim=-1)


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, m), computed directly (no cancellation)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


class CircleGenerator(GaussianObservationModel):
    """A latent angle, a nonlinear generator to ``obs_dim`` pixels, Gaussian pixel noise.

    Args:
        obs_dim: D, the number of pixels (observations are flattened to (n, D)).
        hidden: widths of the generator's hidden layers (tanh activations).
        output: "tanh" (means in (−1, 1), for images scaled to that range) or "linear".
        init_std: initial noise standard deviation σ (one learned scalar).

    Shapes: latents z are (n, 2) points on the unit circle; means and observations (n, D).
    """

    latent_dim = 2

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden: Sequence[int] = (128, 128),
        output: str = "tanh",
        init_std: float = 0.5,
    ):
        super().__init__()
        if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 1:
            raise ValueError(f"obs_dim: expected a positive integer, got {obs_dim!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden: expected positive integer widths, got {hidden!r}")
        if output not in ("tanh", "linear"):
            raise ValueError(f"output: expected 'tanh' or 'linear', got {output!r}")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std: expected a positive number, got {init_std!r}")
        self.obs_dim, self.hidden, self.output = obs_dim, hidden, output
        layers: list[nn.Module] = []
        width = 2
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, obs_dim))
        if output == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.likelihood = GaussianLikelihood(None, init_std=float(init_std))

    def _ref(self) -> torch.Tensor:
        return self.likelihood.log_std

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """g_θ(z): (n, 2) → (n, D)."""
        return self.net(z)

    def sample_latent(self, n: int) -> torch.Tensor:
        ref = self._ref()
        a = 2 * math.pi * torch.rand(n, dtype=ref.dtype, device=ref.device)
        return circle_point(a)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        # uniform angle: density 1/(2π) with respect to arc length
        return torch.full(z.shape[:1], -math.log(2 * math.pi), dtype=z.dtype, device=z.device)

    def sweep(self, n_angles: int = 360) -> tuple[torch.Tensor, torch.Tensor]:
        """(angles (A,), mean images (A, D)) along an equally spaced grid of the circle."""
        ref = self._ref()
        a = angle_grid(n_angles, dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            return a, self.mean(circle_point(a))

    def latent_search(
        self, x: torch.Tensor, n_angles: int = 720
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid angle whose mean is nearest each x: (angles (n,), squared errors (n,)).

        The squared error is the mean over pixels of (x − g_θ(z(â)))².
        """
        a, mu = self.sweep(n_angles)
        x = flat(x).to(mu.dtype)
        d2 = _sq_dist(x, mu) / self.obs_dim  # (n, A)
        best, idx = d2.min(dim=1)
        return a[idx], best

    def exact_log_likelihood(self, x: torch.Tensor, n_angles: int = 720) -> torch.Tensor:
        """Mean log p_θ(x) over the batch by the trapezoid rule over the angle.

        Accurate when g_θ varies little between grid angles compared with σ.
        """
        ref = self._ref()
        a = angle_grid(n_angles, dtype=ref.dtype, device=ref.device)
        mu = self.mean(circle_point(a))  # (A, D)
        x = flat(x).to(mu.dtype)
        var = self.likelihood.variance()
        d2 = _sq_dist(x, mu)
        log_comp = -0.5 * d2 / var - 0.5 * self.obs_dim * torch.log(2 * math.pi * var)
        return (torch.logsumexp(log_comp, dim=1) - math.log(n_angles)).mean()
