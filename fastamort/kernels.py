"""Kernels as modules: a learnable lengthscale (in log space) and an optional feature network.

``Gaussian``, ``Matern12``, ``Matern32``, ``Matern52`` and ``Laplacian`` wrap the engine ops
:func:`fastamort.gram` and :func:`fastamort.gram_matmul` (and so every backend). With a feature
network φ (a "deep kernel"), k(x, y) = k₀(φ(x), φ(y)); the network always runs in eval mode
(:meth:`Kernel.features`), so that one batch's statistics never normalise it (the authors' code
left BatchNorm in train mode). :meth:`Kernel.calibrate_batch_norm` sets its BatchNorm statistics
to the exact statistics of a set of points: :meth:`Kernel.init_from` does so once, and
:func:`fastamort.kernel_loss` again on each kernel step's fresh sleep set, so that they follow
the model as θ moves (then frozen for that step's sleep and wake evaluation).

:meth:`Kernel.init_from` sets the lengthscale by the median heuristic: the median pairwise
distance between the (featurised) points (Euclidean, or L1 for the Laplacian).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_finite
from .ops import gram, gram_matmul


def flatten_points(x: torch.Tensor) -> torch.Tensor:
    """Observations (n, *shape) → feature vectors (n, D)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x: expected observations of shape (n, *shape), got a 0-d tensor")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit D: n may be 0


def median_distance(x: torch.Tensor, *, p: float = 2.0, max_points: int = 1000) -> float:
    """Median pairwise distance of the rows of x (n, D), on at most ``max_points`` rows.

    1.0 for fewer than 2 rows or a zero median; ValueError for NaN or infinite values in x
    or distances that overflow.
    """
    x = x.detach()
    check_finite((x, "x"))
    if x.shape[0] > max_points:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points].to(x.device)]
    if x.shape[0] < 2:
        return 1.0
    d = torch.cdist(x.double(), x.double(), p=p)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    med = float(torch.quantile(d[iu[0], iu[1]], 0.5))  # as numpy: mean of the middle two
    if not math.isfinite(med):
        raise ValueError("x: pairwise distances overflow; rescale the data")
    return med if med > 0 else 1.0


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Kernel(nn.Module):
    """Base class: subclasses set ``name`` to a kernel of :mod:`fastamort.ops.kernel_math`.

    Args:
        lengthscale: initial lengthscale (None: 1.0 until :meth:`init_from` is called).
        features: optional feature network applied to flattened observations.
        learn_lengthscale: whether ``log_lengthscale`` is a trainable parameter.
        backend: engine backend ("auto", "triton", "cpp", "torch") of every kernel-ridge op
            run with this kernel: its Gram matrices and the estimator's ridge solves.
    """

    name = "gaussian"

    def __init__(
        self,
        lengthscale: float | None = None,
        *,
        features: nn.Module | None = None,
        learn_lengthscale: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        init = 1.0 if lengthscale is None else float(lengthscale)
        if not init > 0 or not math.isfinite(init):
            raise ValueError(f"lengthscale: must be positive and finite, got {lengthscale}")
        self.log_lengthscale = nn.Parameter(
            torch.tensor(math.log(init), dtype=torch.float64), requires_grad=learn_lengthscale
        )
        self.features_net = features
        self.backend = backend
        self.register_buffer("initialised", torch.tensor(lengthscale is not None))

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.log_lengthscale.exp()

    def features(self, x: torch.Tensor, *, train: bool = False) -> torch.Tensor:
        """φ(x) as (n, D) vectors; the network runs in eval mode unless ``train``."""
        x = flatten_points(x)
        net = self.features_net
        if net is None:
            return x
        was_training = net.training
        net.train(train)
        try:
            out = net(x)
        finally:
            net.train(was_training)
        return flatten_points(out)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> Kernel:
        """Median heuristic on the features of ``x``; returns self.

        A feature network's batch-normalisation statistics are first set to the exact
        statistics of ``x`` (the network then always runs in eval mode, so that a batch never
        normalises itself — the authors' BatchNorm quirk).
        """
        flat = flatten_points(x)
        if flat.shape[0] < 2:
            raise ValueError(
                f"x: the median heuristic needs at least 2 points, got shape {tuple(x.shape)}"
            )
        check_finite((flat, "x"))
        self.calibrate_batch_norm(flat)
        phi = self.features(x)
        if not bool(torch.isfinite(phi).all()):
            raise ValueError("x: the feature network gives NaN or infinite features")
        p = 1.0 if self.name == "laplacian" else 2.0
        self.log_lengthscale.fill_(math.log(median_distance(phi, p=p)))
        self.initialised.fill_(True)
        return self

    @torch.no_grad()
    def calibrate_batch_norm(self, x: torch.Tensor) -> bool:
        """Sets the running statistics of every BatchNorm layer of the feature network to the
        exact statistics of ``x`` (n, *obs_shape), by one pass in train mode; the network then
        runs in eval mode with them. Returns whether there was a BatchNorm layer."""
        net = self.features_net
        norms = [m for m in (net.modules() if net is not None else ()) if isinstance(m, _NORMS)]
        if not norms:
            return False
        x = flatten_points(x)
        if x.shape[0] < 2:
            raise ValueError(
                f"x: BatchNorm statistics need at least 2 points, got shape {tuple(x.shape)}"
            )
        momenta = [m.momentum for m in norms]
        was_training = net.training
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass gives the exact statistics
            net.train()
            net(x)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            net.train(was_training)
        return True

    def _ell(self, like: torch.Tensor) -> torch.Tensor:
        return self.lengthscale.to(like.dtype)

    def gram_features(self, fx: torch.Tensor, fy: torch.Tensor | None = None) -> torch.Tensor:
        """k on already-featurised points (n, D), (m, D)."""
        return gram(fx, fy, kernel=self.name, lengthscale=self._ell(fx), backend=self.backend)

    def gram_matmul_features(
        self, fx: torch.Tensor, fy: torch.Tensor | None, v: torch.Tensor
    ) -> torch.Tensor:
        """k(fx, fy) @ v on already-featurised points, never storing the Gram matrix."""
        return gram_matmul(
            fx, fy, v, kernel=self.name, lengthscale=self._ell(fx), backend=self.backend
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Gram matrix k(x_i, y_j) of observations (featurised in eval mode)."""
        fx = self.features(x)
        return self.gram_features(fx, None if y is None else self.features(y))

    def extra_repr(self) -> str:
        return f"lengthscale={float(self.lengthscale.detach()):.4g}, backend={self.backend!r}"


class Gaussian(Kernel):
    """exp(−‖x−y‖²/(2ℓ²))."""

    name = "gaussian"


class Matern12(Kernel):
    """exp(−‖x−y‖/ℓ)."""

    name = "matern12"


class Matern32(Kernel):
    """(1 + √3r/ℓ)·exp(−√3r/ℓ)."""

    name = "matern32"


class Matern52(Kernel):
    """(1 + √5r/ℓ + 5r²/(3ℓ²))·exp(−√5r/ℓ)."""

    name = "matern52"


class Laplacian(Kernel):
    """exp(−‖x−y‖₁/ℓ)."""

    name = "laplacian"


KERNEL_CLASSES: dict[str, type[Kernel]] = {
    cls.name: cls for cls in (Gaussian, Matern12, Matern32, Matern52, Laplacian)
}
