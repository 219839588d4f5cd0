"""Variational auto-encoder (Kingma & Welling 2014): the reparameterised ELBO.

ELBO(x) = E_{q_φ(z|x)}[log p_θ(z, x) − log q_φ(z|x)] ≤ log p_θ(x), estimated with
``n_samples`` reparameterised samples z = μ_φ(x) + σ_φ(x)·ε per datum; θ and φ both ascend it.
The θ-gradient E_q[∇θ log p_θ(z, x)] is the ML gradient only when q_φ(z|x) is the exact
posterior: otherwise it is biased, however many samples are drawn.

With a :class:`~fastamort.baselines.CategoricalEncoder` (discrete latents) the expectation
is a sum over the K values, computed exactly (no sampling, no REINFORCE; ``n_samples`` is
then ignored), so the ELBO and both its gradients are exact.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ._common import check_inputs, log_joint_particles
from .encoders import CategoricalEncoder, Encoder


def elbo(
    model: nn.Module, encoder: Encoder, x: torch.Tensor, *, n_samples: int = 1
) -> torch.Tensor:
    """Per-datum ELBO estimate, shape (B,), differentiable in θ and φ."""
    x = check_inputs(model, encoder, x)
    n_samples = check_int(n_samples, "n_samples", 1)
    if isinstance(encoder, CategoricalEncoder):
        z, log_q = encoder.enumerate(x)
        log_p = log_joint_particles(model, z, x)
        return (torch.exp(log_q) * (log_p - log_q)).sum(0)
    z, log_q = encoder.sample_and_log_prob(x, n_samples, reparameterise=True)
    return (log_joint_particles(model, z, x) - log_q).mean(0)


def vae_loss(
    model: nn.Module, encoder: Encoder, x: torch.Tensor, *, n_samples: int = 1
) -> torch.Tensor:
    """−(mean ELBO over the batch): minimise it w.r.t. the model's and the encoder's parameters.

    Example:
        >>> import torch
        >>> from fastamort.models import FactorAnalysis
        >>> from fastamort.baselines import GaussianEncoder, vae_loss
        >>> _ = torch.manual_seed(0)
        >>> model, enc = FactorAnalysis(4, 2), GaussianEncoder(4, 2)
        >>> vae_loss(model, enc, torch.randn(8, 4), n_samples=3).shape
        torch.Size([])
    """
    return -elbo(model, encoder, x, n_samples=n_samples).mean()
