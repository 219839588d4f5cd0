"""The ``images`` experiment's data and sample-quality metrics: 8×8 digits, a small CNN
classifier as the feature network ("LeNet-FID"), Fréchet distance and kernel inception
distance.

* :func:`load_digits_split`: scikit-learn's digits (1797 images, 8×8, values 0..16, shipped
  with scikit-learn, no download), one fixed seeded train/test split, in two versions:
  *binary* (threshold: pixel ≥ 8, i.e. x/16 ≥ 0.5, deterministic) and *continuous*
  (uniform dequantisation with a fixed seed: (x + u)/17, u ~ U(0, 1), so the values lie in
  (0, 1) and a density on them is well defined).
* :class:`DigitClassifier`: conv(1→16, 3×3) → ReLU → conv(16→32, 3×3) → ReLU → max-pool 2 →
  linear(512→64) → ReLU (the *features*) → linear(64→10). Trained on the training split
  only (both versions of each image, so its features mean something for binary and
  continuous images alike). The features are divided by one fixed scale c, set on the
  training split so that mean ‖f‖²/64 = 1 there, which keeps the cubic KID kernel in a
  sensible range (FID scales with c²; c is the same for every method and seed).
* :func:`frechet_distance` and :func:`kernel_inception_distance`: the FID formula and the
  unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb/d + 1)³ (Bińkowski et al.
  2018), on the classifier's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

IMAGE_SIDE = 8
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE


@dataclass
class DigitsSplit:
    """The two versions of one train/test split; tensors (n, 64) float32, labels (n,) long."""

    binary_train: torch.Tensor
    binary_test: torch.Tensor
    continuous_train: torch.Tensor
    continuous_test: torch.Tensor
    labels_train: torch.Tensor
    labels_test: torch.Tensor

    def get(self, variant: str, part: str) -> torch.Tensor:
        """``variant`` "binary"/"continuous", ``part`` "train"/"test"."""
        return getattr(self, f"{variant}_{part}")


def load_digits_split(n_test: int, seed: int) -> DigitsSplit:
    """scikit-learn's digits, a seeded split with ``n_test`` test images (needs scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the images experiment needs scikit-learn for its data set "
            "(pip install 'fastamort[bench]')"
        ) from exc
    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float64)  # (1797, 64), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    if not 0 < n_test < pixels.shape[0]:
        raise ValueError(f"n_test: expected 0 < n_test < {pixels.shape[0]}, got {n_test}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(pixels.shape[0])
    test, train = order[:n_test], order[n_test:]
    binary = (pixels >= 8).astype(np.float32)
    continuous = ((pixels + rng.uniform(size=pixels.shape)) / 17.0).astype(np.float32)
    t = torch.from_numpy
    return DigitsSplit(
        t(binary[train]), t(binary[test]), t(continuous[train]), t(continuous[test]),
        t(labels[train]), t(labels[test]),
    )  # fmt: skip


class DigitClassifier(nn.Module):
    """A small CNN for 8×8 digits; :meth:`features` is its 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.register_buffer("feature_scale", torch.tensor(1.0))

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> DigitClassifier:
        """Sets one feature scale c so that the features of ``x`` have mean ‖f‖²/d = 1."""
        self.feature_scale.fill_(1.0)
        f = self.features(x)
        self.feature_scale.fill_(float((f * f).sum(-1).mean() / f.shape[1]) ** 0.5)
        return self

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 64) or (n, 8, 8) images in [0, 1] → (n, 64) penultimate activations."""
        h = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE).to(self.fc1.weight.dtype)
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(h)))), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations divided by the fixed scale c (:meth:`calibrate`)."""
        return self.raw_features(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, 10)."""
        return self.fc2(self.raw_features(x))


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, batch_size: int = 64
) -> DigitClassifier:
    """Adam (lr 2e-3) on the cross-entropy, ``epochs`` passes in seeded mini-batches; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def features(net: DigitClassifier, x: torch.Tensor) -> np.ndarray:
    """Float64 NumPy features (n, 64) of images x (n, 64) (any device/dtype)."""
    return net.features(x.detach().cpu().float()).double().numpy()


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) between two feature sets (n, d).

    tr (Σ_a Σ_b)^{1/2} is computed as tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2} (same eigenvalues,
    symmetric, so stable when dead features make the covariances singular).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    eig = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    cross = np.sqrt(np.clip(eig, 0.0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(value, 0.0)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between feature sets a (m, d) and b (n, d), kernel (aᵀb/d + 1)³."""
    d = a.shape[1]
    m, n = a.shape[0], b.shape[0]
    if m < 2 or n < 2:
        raise ValueError("kernel_inception_distance: need at least 2 points in each set")
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    term_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    term_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(term_a + term_b - 2.0 * kab.mean())
