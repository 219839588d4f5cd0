"""The model protocol of the amortised learner.

A *model* is any ``torch.nn.Module`` with

``sample(n) -> (z, x)``
    draws n latents and observations from the model ("sleep"); no gradient is needed or used:
    the estimator treats the samples as constants (no reparameterisation).
``log_joint(z, x) -> Tensor[n]``
    log p_θ(z, x) per sample, differentiable in the parameters θ.

The exponential-family form p_θ(x|z) = h(x)·exp(η_θ(z)·S(x) − Ψ_θ(z)) additionally provides
``sufficient_stats(x) -> (n, P)``, ``natural_params(z) -> (n, P)``, ``log_normaliser(z) -> (n,)``,
``log_prior(z) -> (n,)`` and optionally ``log_base_measure(x) -> (n,)``; the estimator then
uses the lower-variance form (see :func:`fastamort.amortised_objective`).

Latents may be anything the model's own methods accept (tensors, tuples, dicts): the estimator
never looks inside ``z``. Observations are flattened to feature vectors for the kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_int

Latent = Any  # a tensor, or any structure of tensors the model understands

EXPFAM_METHODS = ("sufficient_stats", "natural_params", "log_normaliser", "log_prior")


def is_expfam(model: object) -> bool:
    """True when ``model`` provides the exponential-family methods."""
    return all(callable(getattr(model, name, None)) for name in EXPFAM_METHODS)


def sample_categorical(probs: torch.Tensor, n: int) -> torch.Tensor:
    """n independent draws from Categorical(probs) (K,): (n,) int64, also for n = 0."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    return torch.multinomial(probs, n, replacement=True)


def check_model(model: object) -> None:
    """``TypeError`` unless ``model`` follows the protocol (names what is missing)."""
    missing = [m for m in ("sample", "log_joint") if not callable(getattr(model, m, None))]
    if not isinstance(model, nn.Module):
        missing.insert(0, "torch.nn.Module base class")
    if missing:
        raise TypeError(
            f"model: {type(model).__name__} is not a fastamort model; missing {', '.join(missing)} "
            "(see fastamort.GenerativeModel)"
        )


def overrides(model: object, base: type, *names: str) -> bool:
    """True when ``model``'s class redefines any of the methods ``names`` of ``base``."""
    return any(getattr(type(model), n) is not getattr(base, n) for n in names)


def likelihood_targets(
    likelihood: nn.Module, param: torch.Tensor, log_prior: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ExpFamModel.expfam_targets` from the likelihood's parameter (the decoder's
    output, computed once): (Ψ(param) − log p(z), η(param))."""
    return likelihood.log_normaliser(param) - log_prior, likelihood.natural_params(param)


class GenerativeModel(nn.Module):
    """Optional base class documenting the protocol (subclasses implement both methods)."""

    def sample(self, n: int) -> tuple[Latent, torch.Tensor]:
        """Draws ``(z, x)``, ``n`` samples from p_θ(z) p_θ(x|z); x has shape (n, *obs_shape)."""
        raise NotImplementedError

    def log_joint(self, z: Latent, x: torch.Tensor) -> torch.Tensor:
        """log p_θ(z, x), shape (n,), differentiable in the parameters."""
        raise NotImplementedError


class ExpFamModel(GenerativeModel):
    """Base class for models whose likelihood is an exponential family in x.

    Subclasses implement ``sample``, ``sufficient_stats``, ``natural_params``,
    ``log_normaliser`` and ``log_prior``; ``log_joint`` follows from them.
    """

    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        """S(x), shape (n, P)."""
        raise NotImplementedError

    def natural_params(self, z: Latent) -> torch.Tensor:
        """η_θ(z), shape (n, P)."""
        raise NotImplementedError

    def log_normaliser(self, z: Latent) -> torch.Tensor:
        """Ψ_θ(z), shape (n,)."""
        raise NotImplementedError

    def log_prior(self, z: Latent) -> torch.Tensor:
        """log p_θ(z), shape (n,)."""
        raise NotImplementedError

    def expfam_targets(self, z: Latent) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ψ(z) − log p(z) (n,), η(z) (n, P)): the exponential-family estimator's regression
        targets. Override to share work between them (the decoder's output, for example)."""
        return self.log_normaliser(z) - self.log_prior(z), self.natural_params(z)

    def log_base_measure(self, x: torch.Tensor) -> torch.Tensor:
        """log h(x), shape (n,); zero unless overridden."""
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def log_joint(self, z: Latent, x: torch.Tensor) -> torch.Tensor:
        eta = self.natural_params(z)
        stats = self.sufficient_stats(x)
        if stats.ndim != 2 or eta.shape[0] != stats.shape[0]:  # no silent broadcasting
            raise ValueError(
                f"x: {stats.shape[0] if stats.ndim == 2 else 'no rows of'} observations "
                f"(shape {tuple(x.shape)}) for {eta.shape[0]} latents; z and x need one row "
                "per sample each"
            )
        return (
            (eta * stats).sum(-1)
            - self.log_normaliser(z)
            + self.log_prior(z)
            + self.log_base_measure(x)
        )


class GaussianObservationModel(ExpFamModel):
    """An :class:`ExpFamModel` whose x | z is Gaussian with mean ``self.mean(z)`` and the noise
    of ``self.likelihood`` (a :class:`fastamort.likelihoods.GaussianLikelihood`).

    Subclasses define ``likelihood``, ``mean(z)``, ``sample_latent(n)`` and ``log_prior(z)``.
    """

    likelihood: nn.Module

    def mean(self, z: Latent) -> torch.Tensor:
        raise NotImplementedError

    def sample_latent(self, n: int) -> Latent:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Latent, torch.Tensor]:
        z = self.sample_latent(check_int(n, "n", 0))
        return z, self.likelihood.sample(self.mean(z))

    def sufficient_stats(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.sufficient_stats(x)

    def natural_params(self, z: Latent) -> torch.Tensor:
        return self.likelihood.natural_params(self.mean(z))

    def log_normaliser(self, z: Latent) -> torch.Tensor:
        return self.likelihood.log_normaliser(self.mean(z))

    def expfam_targets(self, z: Latent) -> tuple[torch.Tensor, torch.Tensor]:
        if overrides(self, GaussianObservationModel, "natural_params", "log_normaliser"):
            return super().expfam_targets(z)
        return likelihood_targets(self.likelihood, self.mean(z), self.log_prior(z))
