"""Random Fourier features: k(x, y) ≈ φ(x)·φ(y), φ(x) = √(2/D) cos(xᵀω/ℓ + b).

Bochner: a stationary kernel with k(0) = 1 is the characteristic function of its spectral
density, so with ω ~ p(ω), b ~ U(0, 2π), E[2 cos(xᵀω + b) cos(yᵀω + b)] = k(x − y). The
√(2/D) scaling makes φ(x)·φ(y) an average over the D features, so φ·φ → k (the authors'
features lacked it, which rescales the effective ridge by D/2). Spectral densities
(lengthscale ℓ applied at evaluation, so it stays learnable):

* Gaussian exp(−r²/2ℓ²): ω ~ N(0, I);
* Matérn-ν (ν = ½, 3⁄2, 5⁄2; r Euclidean): ω ~ multivariate Student-t with 2ν degrees of
  freedom, ω = z·√(2ν/u), z ~ N(0, I), u ~ χ²_{2ν} (a sum of 2ν squared normals);
* Laplacian exp(−‖x−y‖₁/ℓ): independent Cauchy(0, 1) coordinates.

The KRR is then solved in primal form (ΦᵀΦ + λI)⁻¹ with λ on the diagonal only
(:func:`fastamort.solvers._common.feature_ridge_weights`).
"""

from __future__ import annotations

import math

import torch

from ..kernels import Kernel
from ._common import KRR_DTYPE, feature_ridge_weights

#: 2ν of the Matérn kernels (the Student-t degrees of freedom of their spectral densities).
MATERN_DOF = {"matern12": 1, "matern32": 3, "matern52": 5}
RFF_KERNELS = ("gaussian", *MATERN_DOF, "laplacian")


def sample_frequencies(
    kernel_name: str,
    dim: int,
    n_features: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-lengthscale frequencies ω (dim, D) and phases b (D,) for ``kernel_name``."""
    opts = {"dtype": KRR_DTYPE, "generator": generator}
    if kernel_name == "gaussian":
        omega = torch.randn(dim, n_features, **opts)
    elif kernel_name in MATERN_DOF:
        dof = MATERN_DOF[kernel_name]
        z = torch.randn(dim, n_features, **opts)
        u = torch.randn(dof, n_features, **opts).square().sum(0)
        omega = z * torch.sqrt(dof / u)
    elif kernel_name == "laplacian":
        omega = torch.tan(math.pi * (torch.rand(dim, n_features, **opts) - 0.5))
    else:
        raise ValueError(
            f"solver='rff': random Fourier features are defined for the "
            f"{', '.join(RFF_KERNELS)} kernels, not {kernel_name!r}"
        )
    phase = 2 * math.pi * torch.rand(n_features, **opts)
    return omega.to(device), phase.to(device)


class RandomFourierFeatures:
    """φ(f) = √(2/D) cos(f ω / ℓ + b) for a kernel; ℓ read from the kernel at each call
    (differentiable), ω and b fixed at construction."""

    def __init__(
        self,
        kernel: Kernel,
        dim: int,
        n_features: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.kernel = kernel
        self.n_features = n_features
        self.omega, self.phase = sample_frequencies(
            kernel.name, dim, n_features, generator=generator, device=device
        )
        self.scale = math.sqrt(2.0 / n_features)

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        ell = self.kernel.lengthscale.to(KRR_DTYPE)
        return self.scale * torch.cos((f.to(KRR_DTYPE) @ self.omega) / ell + self.phase)


@torch.no_grad()
def rff_weights(
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor | None,
    lam: float,
    *,
    n_features: int,
) -> tuple[torch.Tensor, dict]:
    """Random-feature KRR weights W (M, P) ≈ (K + λI)⁻¹ K_sw V (V None: the identity), and an
    info dict."""
    phi = RandomFourierFeatures(kernel, fs.shape[1], n_features, device=fs.device)
    w = feature_ridge_weights(phi, fs, fw, v, lam, rank=n_features, backend=kernel.backend)
    return w, {"n_features": n_features}
