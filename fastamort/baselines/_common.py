"""Helpers shared by the baseline losses: input checks and the log joint on particles."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.base import check_model
from .encoders import Encoder


def check_inputs(model: nn.Module, encoder: object, x: object) -> torch.Tensor:
    """Validates (model, encoder, x); returns x. Errors name the offending argument."""
    check_model(model)
    if not isinstance(encoder, Encoder):
        raise TypeError(
            "encoder: expected a fastamort.baselines.GaussianEncoder or CategoricalEncoder, "
            f"got {type(encoder).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating dtype, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: contains NaN or infinite values")
    encoder.flat(x)  # shape check against the encoder's input size
    return x


def log_joint_particles(model: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_θ(z_sb, x_b) for particles z (S, B, *latent_shape) and data x (B, *obs_shape):
    (S, B), by one call of ``model.log_joint`` on the flattened S·B pairs."""
    s, b = z.shape[0], z.shape[1]
    if b != x.shape[0]:
        raise ValueError(f"z: {b} particles columns for a batch of {x.shape[0]} data")
    xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
    zs = z.reshape(s * b, *z.shape[2:])
    out = model.log_joint(zs, xs)
    if out.shape != (s * b,):
        raise ValueError(
            f"model.log_joint returned shape {tuple(out.shape)}, expected ({s * b},) "
            "(one value per (z, x) pair)"
        )
    return out.reshape(s, b)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/S) Σ_s exp(log_w_s) along ``dim``, stably."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])
