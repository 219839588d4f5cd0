"""Helpers shared by the baseline losses: input checks and the log joint on particles."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..models.base import check_model
from .encoders import CategoricalEncoder, Encoder


@dataclass(frozen=True)
class SampleSignature:
    """What one sample of a model looks like: its latent (None when not one tensor) and the
    number of values of one observation."""

    latent_shape: tuple[int, ...] | None  # per sample
    latent_dtype: torch.dtype | None
    latent_type: str
    obs_size: int


_SIGNATURES: weakref.WeakKeyDictionary[nn.Module, SampleSignature] = weakref.WeakKeyDictionary()


def sample_signature(model: nn.Module) -> SampleSignature:
    """:class:`SampleSignature` of ``model`` from one sample, drawn once per model with the
    global torch RNG saved and restored (so a run's random numbers do not change)."""
    sig = _SIGNATURES.get(model)
    if sig is None:
        param = next(iter(model.parameters()), None)
        devices = [param.device] if param is not None and param.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            z, x = model.sample(1)
        tensor = isinstance(z, torch.Tensor)
        sig = SampleSignature(
            tuple(z.shape[1:]) if tensor else None,
            z.dtype if tensor else None,
            type(z).__name__,
            math.prod(x.shape[1:]),
        )
        _SIGNATURES[model] = sig
    return sig


def check_encoder_fits(model: nn.Module, encoder: Encoder, x: torch.Tensor) -> None:
    """ValueError/TypeError naming the mismatch when ``encoder``'s latents (or ``x``) are not
    what ``model.log_joint`` takes, before any particle reaches the model."""
    sig = sample_signature(model)
    name = type(model).__name__
    if math.prod(x.shape[1:]) != sig.obs_size:
        raise ValueError(
            f"x: {math.prod(x.shape[1:])} values per datum (shape {tuple(x.shape)}), but "
            f"{name}'s observations have {sig.obs_size}"
        )
    if sig.latent_shape is None:
        raise TypeError(
            f"model: {name}'s latents are a {sig.latent_type}, not one tensor per sample; the "
            "baselines' encoders give one tensor (GaussianEncoder: (k,) reals; "
            "CategoricalEncoder: one integer)"
        )
    model_latent = f"{'reals' if sig.latent_dtype.is_floating_point else 'integers'} of shape "
    model_latent += f"{sig.latent_shape}"
    if isinstance(encoder, CategoricalEncoder):
        gives = f"one integer in [0, {encoder.n_categories})"
        fits = not sig.latent_dtype.is_floating_point and sig.latent_shape == ()
        k = getattr(model, "n_components", None)
        if fits and isinstance(k, int) and k != encoder.n_categories:
            raise ValueError(
                f"encoder: CategoricalEncoder over {encoder.n_categories} categories, but {name} "
                f"has n_components = {k}; use encoder_for(model)"
            )
    else:
        latent_dim = getattr(encoder, "latent_dim", None)
        gives = f"reals of shape ({latent_dim},)"
        fits = sig.latent_dtype.is_floating_point and sig.latent_shape == (latent_dim,)
        param = next(iter(encoder.parameters()), None)
        if fits and param is not None and param.dtype != sig.latent_dtype:
            raise ValueError(
                f"encoder: its parameters are {param.dtype} but {name}'s latents are "
                f"{sig.latent_dtype}; convert one of them (e.g. encoder.to({sig.latent_dtype}))"
            )
    if not fits:
        raise ValueError(
            f"encoder: {type(encoder).__name__} gives {gives} per datum, but {name}'s latents "
            f"are {model_latent}; use encoder_for(model) or an encoder of the model's latent size"
        )


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
    check_encoder_fits(model, encoder, x)
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
