"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019), per-datum weights.

For each datum x_b, k particles z_sb ~ q_φ(·|x_b) (detached: RWS never reparameterises) and
log-weights log w_sb = log p_θ(z_sb, x_b) − log q_φ(z_sb|x_b). The self-normalised weights
w̃_sb = w_sb / Σ_s' w_s'b are normalised **per datum** (a softmax over the particles of each
column), so each datum gets its own importance-sampling estimate of its posterior:

* wake-θ: ascend Σ_s w̃_sb ∇θ log p_θ(z_sb, x_b), the self-normalised importance-sampling
  estimate of ∇θ log p_θ(x_b), consistent as k → ∞ for any q with enough support. The
  returned θ-loss is −(mean over b of log (1/k) Σ_s w_sb) with q detached, the IWAE bound's
  value, whose θ-gradient is exactly that.
* wake-φ: ascend Σ_s w̃_sb ∇φ log q_φ(z_sb|x_b) (weights detached), which estimates
  −∇φ KL(p_θ(z|x_b) ‖ q_φ(z|x_b)).
* sleep-φ (optional): ascend ∇φ log q_φ(z|x) on (z, x) ~ p_θ drawn from the model,
  −∇φ E_{p_θ(x)} KL(p_θ(z|x) ‖ q_φ(z|x)).

φ-loss = insomnia · wake-φ + (1 − insomnia) · sleep-φ (Pyro's convention: ``insomnia=1`` is
"wake-wake", the default here as Le et al. recommend; ``insomnia=0`` is classic wake-sleep).

Why our own code rather than :class:`pyro.infer.ReweightedWakeSleep`: Pyro's version sums the
log-probabilities over every non-particle dimension, so a mini-batch of B data gets one joint
weight per particle ("Mini-batch training is not supported yet"); its importance estimate
then degenerates as B grows. Here the normalisation is per datum, the losses need nothing
but the model's ``log_joint(z, x)`` (the same protocol as amortised learning, see
:mod:`fastamort.models.base`) and an encoder, and there is no extra dependency.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ._common import check_inputs, log_joint_particles, log_mean_exp
from .encoders import Encoder


def importance_weights(
    model: nn.Module,
    encoder: Encoder,
    x: torch.Tensor,
    *,
    k: int = 5,
    z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Particles and their weights for a batch.

    Args:
        z: particles (k, B, *latent_shape) to use instead of drawing them from the encoder
            (e.g. common random numbers); they are detached.

    Returns:
        ``(z, log_p, log_q, w)``: z (k, B, ...) detached; log p_θ(z, x) (k, B) with the graph
        to θ; log q_φ(z|x) (k, B) with the graph to φ; w (k, B) the self-normalised weights,
        detached, each column (datum) summing to one.
    """
    x = check_inputs(model, encoder, x)
    if z is None:
        k = check_int(k, "k", 2)
        z = encoder.sample(x, k)
    elif not isinstance(z, torch.Tensor) or z.ndim < 2 or z.shape[1] != x.shape[0]:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z: expected particles of shape (k, {x.shape[0]}, ...), got {got}")
    z = z.detach()
    log_q = encoder.log_prob(z, x)
    log_p = log_joint_particles(model, z, x)
    w = torch.softmax((log_p - log_q).detach(), dim=0)
    return z, log_p, log_q, w


def rws_losses(
    model: nn.Module,
    encoder: Encoder,
    x: torch.Tensor,
    *,
    k: int = 5,
    insomnia: float = 1.0,
    n_sleep: int | None = None,
    z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(theta_loss, phi_loss)``: minimise the first w.r.t. θ, the second w.r.t. φ.

    θ-loss depends on θ only, φ-loss on φ only, so ``(theta_loss + phi_loss).backward()``
    gives both gradients in one pass.

    Args:
        k: particles per datum (≥ 2).
        insomnia: weight of wake-φ in the φ-loss, in [0, 1]; the rest is sleep-φ.
        n_sleep: (z, x) pairs drawn from the model for sleep-φ (default: the batch size).
        z: given particles (k, B, ...) instead of encoder samples.

    Example:
        >>> import torch
        >>> from fastamort.models import GaussianMixture
        >>> from fastamort.baselines import CategoricalEncoder, rws_losses
        >>> _ = torch.manual_seed(0)
        >>> model, enc = GaussianMixture(2, 3), CategoricalEncoder(2, 3)
        >>> theta_loss, phi_loss = rws_losses(model, enc, torch.randn(8, 2), k=5)
        >>> (theta_loss + phi_loss).backward()
    """
    if isinstance(insomnia, bool) or not 0.0 <= float(insomnia) <= 1.0:
        raise ValueError(f"insomnia: expected a number in [0, 1], got {insomnia!r}")
    insomnia = float(insomnia)
    z, log_p, log_q, w = importance_weights(model, encoder, x, k=k, z=z)
    theta_loss = -log_mean_exp(log_p - log_q.detach(), 0).mean()
    phi_loss = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    if insomnia > 0.0:
        phi_loss = phi_loss - insomnia * (w * log_q).sum(0).mean()
    if insomnia < 1.0:
        n = x.shape[0] if n_sleep is None else check_int(n_sleep, "n_sleep", 1)
        with torch.no_grad():
            zs, xs = model.sample(n)
        phi_loss = phi_loss - (1.0 - insomnia) * encoder.log_prob(zs.unsqueeze(0), xs).mean()
    return theta_loss, phi_loss
