"""The experiments' ``features`` option: the learned feature kernel of the paper (§5.10).

``"none"`` (the default): a Gaussian kernel on the raw observations. ``"linear-bn"``: a
Gaussian kernel on φ(x) = BatchNorm(W x + b), one learned linear map followed by batch
normalisation, the authors' "linear network followed by batch norm (in the paper)" (PAPER.md
§5.10; the authors' Features.py in kevin-w-li/al-ws). The learner trains W, b, the BatchNorm
affine parameters, the lengthscale and λ on held-out sleep samples; the BatchNorm statistics
are set to the exact statistics of each kernel step's fresh sleep set and frozen (eval mode)
for that step's sleep and wake evaluation
(:meth:`fastamort.kernels.Kernel.calibrate_batch_norm`, called by
:func:`fastamort.kernel_loss`), never the batch statistics of the authors' train-mode nets.
"""

from __future__ import annotations

import torch
from torch import nn

from fastamort.kernels import Gaussian

from . import _common

#: Values of the experiments' ``features`` option.
FEATURES = ("none", "linear-bn")


def check_features(features: object) -> str:
    """``features`` as given, or ValueError naming the choices."""
    if features not in FEATURES:
        raise ValueError(f"features: expected one of {', '.join(FEATURES)}, got {features!r}")
    return features  # type: ignore[return-value]


def feature_kernel(
    features: str, obs_dim: int, width: int, *, seed: int, like: torch.Tensor
) -> Gaussian | None:
    """The kernel for ``features`` (None: the learner's default, Gaussian on raw x).

    ``obs_dim``: flattened observation size; ``width``: number of learned features (at most
    ``obs_dim``: a wider linear map has the same rank, so it adds nothing); the network's
    initial weights come from ``seed`` (the caller's random stream is left as it was), in the
    dtype and on the device of ``like``.
    """
    if check_features(features) == "none":
        return None
    width = min(width, obs_dim)
    with torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []):
        torch.manual_seed(_common.sub_seed(seed, "feature-net"))
        net = nn.Sequential(nn.Linear(obs_dim, width), nn.BatchNorm1d(width))
    return Gaussian(features=net.to(dtype=like.dtype, device=like.device))


def describe(features: str, width: int, obs_dim: int) -> str:
    """One phrase for the notes: which kernel the amortised learner used."""
    if features == "none":
        return "Gaussian kernel on the raw observations"
    width = min(width, obs_dim)
    return f"Gaussian kernel on learned Linear({obs_dim} → {width}) + BatchNorm features"
