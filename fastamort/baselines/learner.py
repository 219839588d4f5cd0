"""A small training loop for the baselines, in the spirit of :class:`fastamort.AmortisedLearner`.

Each step takes a mini-batch, computes the method's loss(es) and one Adam step on the
model (θ) and the encoder (φ). ``train_model=False`` freezes θ and trains only the encoder:
the gradient-estimation experiment uses it to fit q_φ to a fixed model before measuring a
baseline's θ-gradient.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_positive
from ..models.base import check_model
from .encoders import Encoder
from .iwae import iwae_loss
from .rws import rws_losses
from .vae import vae_loss

METHODS = ("vae", "iwae", "rws")


def baseline_losses(
    method: str, model: nn.Module, encoder: Encoder, x: torch.Tensor, *, k: int, n_samples: int,
    insomnia: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(θ-loss, φ-loss) of ``method``; VAE and IWAE have one loss for both (returned twice
    would double-count, so the φ-loss is then a zero tensor)."""
    if method == "vae":
        loss = vae_loss(model, encoder, x, n_samples=n_samples)
    elif method == "iwae":
        loss = iwae_loss(model, encoder, x, k=k)
    elif method == "rws":
        return rws_losses(model, encoder, x, k=k, insomnia=insomnia)
    else:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    return loss, torch.zeros((), dtype=loss.dtype, device=loss.device)


class BaselineLearner:
    """Trains a model (and its encoder) by the VAE, IWAE or RWS objective.

    Args:
        model: a model following :mod:`fastamort.models.base`.
        encoder: a :class:`~fastamort.baselines.GaussianEncoder` or
            :class:`~fastamort.baselines.CategoricalEncoder`.
        method: "vae", "iwae" or "rws".
        k: particles per datum (IWAE, RWS).
        n_samples: ELBO samples per datum (VAE).
        insomnia: RWS wake-φ weight (1: wake-wake; 0: classic sleep-φ).
        lr, encoder_lr: Adam learning rates of θ and φ (``encoder_lr`` defaults to ``lr``).
        train_model: False freezes θ (encoder-only training).
        seed: seeds the data order.
        max_grad_norm: clip each gradient (θ and φ separately) to this norm.

    Example:
        >>> import torch
        >>> from fastamort.models import FactorAnalysis
        >>> from fastamort.baselines import BaselineLearner, GaussianEncoder
        >>> _ = torch.manual_seed(0)
        >>> data = FactorAnalysis(3, 1).sample(200)[1]
        >>> learner = BaselineLearner(FactorAnalysis(3, 1), GaussianEncoder(3, 1), "iwae", k=5)
        >>> len(learner.fit(data, epochs=1, batch_size=100, progress=False))
        2
    """

    def __init__(
        self,
        model: nn.Module,
        encoder: Encoder,
        method: str = "vae",
        *,
        k: int = 5,
        n_samples: int = 1,
        insomnia: float = 1.0,
        lr: float = 1e-3,
        encoder_lr: float | None = None,
        train_model: bool = True,
        seed: int = 0,
        max_grad_norm: float | None = None,
    ):
        check_model(model)
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder: expected a fastamort.baselines encoder, got {encoder!r}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        self.model, self.encoder, self.method = model, encoder, method
        self.k, self.n_samples, self.insomnia = k, n_samples, insomnia
        if max_grad_norm is not None:
            max_grad_norm = check_positive(max_grad_norm, "max_grad_norm")
        seed = check_int(seed, "seed", 0)
        self.train_model, self.seed, self.max_grad_norm = train_model, seed, max_grad_norm
        self.model_optimizer = torch.optim.Adam(model.parameters(), lr=lr) if train_model else None
        self.encoder_optimizer = torch.optim.Adam(
            encoder.parameters(), lr=lr if encoder_lr is None else encoder_lr
        )
        self.step_count = 0
        self.history: list[dict[str, Any]] = []

    def step(self, x: torch.Tensor, *, epoch: int = 0) -> dict[str, Any]:
        """One optimiser step on a batch; returns the step's record (losses as floats)."""
        t0 = time.perf_counter()
        theta_loss, phi_loss = baseline_losses(
            self.method, self.model, self.encoder, x, k=self.k, n_samples=self.n_samples,
            insomnia=self.insomnia,
        )  # fmt: skip
        total = theta_loss + phi_loss
        if not bool(torch.isfinite(total.detach())):
            raise FloatingPointError(
                f"step {self.step_count}: the {self.method} loss is not finite "
                f"({float(total.detach())}); no parameter was changed"
            )
        self.encoder_optimizer.zero_grad(set_to_none=True)
        if self.model_optimizer is not None:
            self.model_optimizer.zero_grad(set_to_none=True)
        total.backward()
        groups = [(self.encoder, self.encoder_optimizer)]
        if self.model_optimizer is not None:
            groups.append((self.model, self.model_optimizer))
        for module, opt in groups:
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), self.max_grad_norm)
            opt.step()
        self.model.zero_grad(set_to_none=True)  # frozen θ keeps no stale gradient
        self.step_count += 1
        record = {
            "step": self.step_count,
            "epoch": epoch,
            "loss": float(theta_loss.detach()),
            "phi_loss": float(phi_loss.detach()),
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(record)
        return record

    def fit(
        self,
        data: torch.Tensor | np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 100,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """``epochs`` passes over ``data`` (N, *obs_shape) in shuffled mini-batches; returns the
        history (one record per step: step, epoch, loss, phi_loss, seconds)."""
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(data)
        if not isinstance(data, torch.Tensor) or data.ndim == 0 or data.shape[0] == 0:
            raise ValueError("data: expected a non-empty tensor (N, *obs_shape)")
        batch_size = check_int(batch_size, "batch_size", 1)
        epochs = check_int(epochs, "epochs", 0)
        param = next(iter(self.model.parameters()), None)
        if param is not None:
            data = data.to(device=param.device, dtype=param.dtype)
        n = data.shape[0]
        per_epoch = math.ceil(n / batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * per_epoch, unit="step", desc=self.method)
        try:
            for epoch in range(epochs):
                g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                order = torch.randperm(n, generator=g).to(data.device)
                for i in range(per_epoch):
                    batch = data[order[i * batch_size : (i + 1) * batch_size]]
                    record = self.step(batch, epoch=epoch)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{record['loss']:.4g}")
        finally:
            if bar is not None:
                bar.close()
        return self.history
