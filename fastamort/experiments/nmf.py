"""nmf: Bernoulli matrix factorisation with non-negative factors on binarised digits (paper §5.6).

Data: scikit-learn's 8×8 digits (``sklearn.datasets.load_digits``, 1797 images, bundled with
scikit-learn, no download), binarised by the fixed rule pixel ≥ 8 (of 0..16); a seeded split
into 400 test images and 1397 training images.

Model: :class:`fastamort.models.BernoulliNMF` with k = 16 factors, the authors' "beta-gamma"
benchmark form: z ~ U(0, 1)^k, x_d ~ Bernoulli(σ((W·logit z)_d + b_d)), W = softplus(V) ≥ 0
(64×16; W starts uniform in [0.03, 0.3], b at 0). The latent is handled as u = logit z
(standard logistic prior; see the model's docstring). Both learners start from the same
initial parameters.

Learners (same model, same data, same epochs and batch size 100, Adam lr 1e-2 on θ):

* ``al``: :class:`fastamort.AmortisedLearner`, exponential-family estimator (Bernoulli:
  S(x) = x, η = logits, Ψ = Σ softplus), Gaussian kernel on the raw binary pixels (median
  heuristic; lengthscale and λ learned on held-out sleep samples), M = 1000 sleep samples,
  M' = 150 held-out. λ starts at 0.1: the package's leave-one-out choice picked λ = 100 (the
  top of its grid) at this model's initialisation, and with so much ridge the regression is
  nearly constant in x, the gradient only matches the pixel marginals, and training collapsed
  to the pixel-mean model (W → 0; measured in a first full run: reconstruction MSE 0.132,
  exactly the pixel-mean baseline). With λ = 0.1 it learns (kernel learning then moves λ).
* ``vae``: :class:`fastamort.baselines.BaselineLearner` ("vae", one reparameterised sample)
  with a Gaussian encoder over u = logit z (one tanh layer of 128): a logit-normal posterior
  on (0, 1)^k, i.e. a Gaussian pushed through the sigmoid; in u-space the two log-Jacobians
  cancel, so :class:`fastamort.baselines.GaussianEncoder` is used as it is.
* ``vae_long``: the same VAE given roughly the amortised learner's wall-clock time or less
  (40× the epochs; one VAE epoch was measured 40–65× cheaper than one amortised epoch at
  M = 1000, depending on the machine's load).

Metrics on the 400 test images (one procedure for every model): the latent is the MAP
estimate u* = argmax_u log p(x|u) + log p(u), found per image by 300 Adam steps (lr 0.05, from
u = 0, the prior's mode); as the blog describes ("the posterior was the MAP estimate found
by gradient methods").

* ``*_recon_mse``: mean over pixels and images of (σ(W u* + b) − x)², x the test image.
* ``*_denoise_mse``: flip each test pixel with probability 0.1 (seeded), take the MAP latent
  of the noisy image, compare its reconstruction with the *clean* image.
* ``*_test_loglik``: log p(x) per image (nats) by importance sampling, 1000 draws per image
  from a Laplace proposal N(u*, 1.5²·H⁻¹), H the negative Hessian of the log joint at u*
  (exact for this model); a stochastic lower bound in expectation.
* Trivial baselines: ``pixel_mean_*``: the training pixel means as the reconstruction of every
  image (and their independent-Bernoulli log-likelihood); ``noisy_input_denoise_mse``: the
  noisy image itself (= the flip rate).

Plots: the learned non-negative factors (columns of W as 8×8 images) of each learner;
examples (clean, noisy, reconstructions, denoised); histograms of the per-image MSEs.

Quick configuration: 8 epochs (VAE long: 160), M = 500, M' = 100, 100 MAP steps, 200 IS
draws.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

import fastamort
from fastamort.baselines import BaselineLearner, GaussianEncoder
from fastamort.models.nmf import BernoulliNMF

from . import _common, _features

NAME = "nmf"
METHODS = ("untrained", "al", "vae", "vae_long")
LABELS = {
    "untrained": "untrained model",
    "al": "amortised learning",
    "vae": "VAE (same epochs)",
    "vae_long": "VAE (≈ same time)",
}


@dataclass(frozen=True)
class Config:
    """Sizes and budgets of one run."""

    threshold: float = 8.0  # pixel ≥ threshold → 1 (pixels are 0..16)
    n_test: int = 400
    n_factors: int = 16
    epochs: int = 60
    batch_size: int = 100
    lr: float = 1e-2
    n_sleep: int = 1000
    n_held_out: int = 150
    lam: float | None = 0.1  # initial ridge λ (None: the package's leave-one-out choice)
    kernel_lr: float = 1e-2
    encoder_hidden: tuple[int, ...] = (128,)
    vae_long_factor: int = 40
    flip_prob: float = 0.1
    map_steps: int = 300
    map_lr: float = 0.05
    is_samples: int = 1000
    is_inflation: float = 1.5
    features: str = "none"  # the amortised learner's kernel: "none" or "linear-bn"
    feature_width: int = 100


FULL = Config()
QUICK = Config(
    epochs=8, n_sleep=500, n_held_out=100, vae_long_factor=20, map_steps=100, is_samples=200
)


def load_data(cfg: Config, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train (N, 64), test (n_test, 64)) binarised digits, float32, seeded split."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data
    x = (pixels >= cfg.threshold).astype(np.float32)
    order = np.random.default_rng(_common.sub_seed(seed, "split")).permutation(len(x))
    test, train = x[order[: cfg.n_test]], x[order[cfg.n_test :]]
    return torch.from_numpy(train), torch.from_numpy(test)


def map_latent(model: BernoulliNMF, x: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """u* = argmax_u log p(x|u) + log p(u) per image by Adam (θ untouched), (n, k)."""
    u = torch.zeros(x.shape[0], model.n_factors, dtype=x.dtype, device=x.device,
                    requires_grad=True)  # fmt: skip
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        loss = -(model.log_likelihood_given(u, x) + model.log_prior(u)).sum()
        (grad,) = torch.autograd.grad(loss, u)
        u.grad = grad
        opt.step()
    return u.detach()


@torch.no_grad()
def laplace_log_likelihood(
    model: BernoulliNMF, x: torch.Tensor, u_map: torch.Tensor, n_samples: int, inflation: float,
    chunk: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(log p(x) (n,), ESS (n,)) by importance sampling from N(u*, inflation²·H⁻¹)."""
    w = model.weight().double()
    out, ess = [], []
    for xs, us in zip(x.split(chunk), u_map.split(chunk), strict=True):
        xs, us = xs.double(), us.double()
        p = torch.sigmoid(us @ w.T + model.bias.double())
        h = torch.einsum("dk,nd,dl->nkl", w, p * (1 - p), w)
        h = h + torch.diag_embed(2 * torch.sigmoid(us) * torch.sigmoid(-us))
        cov = torch.linalg.inv(h) * inflation**2
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        q = torch.distributions.MultivariateNormal(us, covariance_matrix=cov)
        u = q.sample((n_samples,))  # (S, n, k)
        logits = u @ w.T + model.bias.double()
        loglik = -F.binary_cross_entropy_with_logits(
            logits, xs.expand_as(logits), reduction="none"
        ).sum(-1)
        prior = (F.logsigmoid(u) + F.logsigmoid(-u)).sum(-1)
        logw = loglik + prior - q.log_prob(u)
        out.append(torch.logsumexp(logw, 0) - math.log(n_samples))
        ess.append(torch.exp(2 * torch.logsumexp(logw, 0) - torch.logsumexp(2 * logw, 0)))
    return torch.cat(out), torch.cat(ess)


def evaluate(
    model: BernoulliNMF, clean: torch.Tensor, noisy: torch.Tensor, cfg: Config, seed: int
) -> dict[str, Any]:
    """Reconstruction and denoising MSE (per image), IS log-likelihood, reconstructions."""
    u = map_latent(model, clean, cfg.map_steps, cfg.map_lr)
    u_noisy = map_latent(model, noisy, cfg.map_steps, cfg.map_lr)
    with torch.no_grad():
        recon, denoised = model.mean(u), model.mean(u_noisy)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ll, ess = laplace_log_likelihood(model, clean, u, cfg.is_samples, cfg.is_inflation)
    return {
        "recon_mse_per_image": ((recon - clean) ** 2).mean(1).cpu().numpy(),
        "denoise_mse_per_image": ((denoised - clean) ** 2).mean(1).cpu().numpy(),
        "loglik": float(ll.mean()),
        "ess_median": float(ess.median()),
        "recon": recon.cpu().numpy(),
        "denoised": denoised.cpu().numpy(),
    }


def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None, features: str = "none",
) -> dict[str, float]:  # fmt: skip
    """Runs the experiment, writes the files into ``out``, returns the flat metrics."""
    cfg = replace(config or (QUICK if quick else FULL), features=features)
    _features.check_features(cfg.features)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    train, test = load_data(cfg, seed)
    train, test = train.to(device), test.to(device)
    g = torch.Generator().manual_seed(_common.sub_seed(seed, "flip"))
    flips = (torch.rand(test.shape, generator=g) < cfg.flip_prob).to(device)
    noisy = torch.where(flips, 1.0 - test, test)

    torch.manual_seed(_common.sub_seed(seed, "model"))
    init = BernoulliNMF(train.shape[1], cfg.n_factors).to(device)
    models = {m: copy.deepcopy(init) for m in METHODS}
    seconds: dict[str, float] = {}

    torch.manual_seed(_common.sub_seed(seed, "al"))
    kernel = _features.feature_kernel(
        cfg.features, train.shape[1], cfg.feature_width, seed=seed, like=train
    )
    learner = fastamort.AmortisedLearner(
        models["al"], kernel=kernel, n_sleep=cfg.n_sleep, n_held_out=cfg.n_held_out, lr=cfg.lr,
        kernel_lr=cfg.kernel_lr, lam=cfg.lam, seed=_common.sub_seed(seed, "order"),
    )  # fmt: skip
    t0 = time.perf_counter()
    history = learner.fit(train, epochs=cfg.epochs, batch_size=cfg.batch_size, progress=progress)
    seconds["al"] = time.perf_counter() - t0

    for method, epochs in (("vae", cfg.epochs), ("vae_long", cfg.epochs * cfg.vae_long_factor)):
        torch.manual_seed(_common.sub_seed(seed, method))
        model = models[method]
        encoder = GaussianEncoder(train.shape[1], cfg.n_factors, cfg.encoder_hidden).to(device)
        base = BaselineLearner(model, encoder, "vae", lr=cfg.lr, n_samples=1,
                               seed=_common.sub_seed(seed, "order"))  # fmt: skip
        t0 = time.perf_counter()
        base.fit(train, epochs=epochs, batch_size=cfg.batch_size, progress=progress)
        seconds[method] = time.perf_counter() - t0

    results = {
        m: evaluate(models[m], test, noisy, cfg, _common.sub_seed(seed, "eval")) for m in METHODS
    }
    p_mean = train.mean(0).clamp(1e-3, 1 - 1e-3)
    pixel_recon = float(((p_mean - test) ** 2).mean())
    pixel_ll = float((test * torch.log(p_mean) + (1 - test) * torch.log1p(-p_mean)).sum(1).mean())

    metrics: dict[str, float] = {}
    for m in METHODS:
        r = results[m]
        metrics[f"{m}_recon_mse"] = float(np.mean(r["recon_mse_per_image"]))
        metrics[f"{m}_denoise_mse"] = float(np.mean(r["denoise_mse_per_image"]))
        metrics[f"{m}_test_loglik"] = r["loglik"]
        metrics[f"{m}_is_ess_median"] = r["ess_median"]
    metrics.update(
        pixel_mean_recon_mse=pixel_recon,
        pixel_mean_denoise_mse=pixel_recon,
        pixel_mean_test_loglik=pixel_ll,
        noisy_input_denoise_mse=float(((noisy - test) ** 2).mean()),
        al_train_s=seconds["al"],
        vae_train_s=seconds["vae"],
        vae_long_train_s=seconds["vae_long"],
        al_seconds_per_step=seconds["al"] / max(1, len(history)),
    )
    plots = plot(models, results, test, noisy, out)
    details = {
        "methods": {
            m: {
                "recon_mse_median": float(np.median(results[m]["recon_mse_per_image"])),
                "denoise_mse_median": float(np.median(results[m]["denoise_mse_per_image"])),
                "mean_weight": float(models[m].weight().detach().mean()),
            }
            for m in METHODS
        },
        "al_history": [
            {k: h[k] for k in ("step", "objective", "lengthscale", "lam") if k in h}
            for h in history[:: max(1, len(history) // 50)]
        ],
        "plots": plots,
    }
    _common.write_metrics(out, metrics, details, env)
    _common.write_results_md(out, NAME, results_sections(metrics, cfg, quick, seed, device))
    return metrics


def results_sections(
    m: dict[str, float], cfg: Config, quick: bool, seed: int, device: torch.device
) -> list[tuple[str, str]]:
    rows = [
        [LABELS[k], m[f"{k}_recon_mse"], m[f"{k}_denoise_mse"], m[f"{k}_test_loglik"],
         m.get(f"{k}_train_s", "")]
        for k in METHODS
    ]  # fmt: skip
    rows.append(["pixel means", m["pixel_mean_recon_mse"], m["pixel_mean_denoise_mse"],
                 m["pixel_mean_test_loglik"], ""])  # fmt: skip
    rows.append(["noisy input itself", "", m["noisy_input_denoise_mse"], "", ""])
    table = _common.markdown_table(
        ["model", "recon. MSE", "denoising MSE", "test log p(x) (nats/image)", "train s"], rows
    )
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. Amortised "
        f"learning: {_features.describe(cfg.features, cfg.feature_width, 64)}. "
        f"Binarised 8×8 digits, {cfg.n_test} test "
        f"images, k = {cfg.n_factors} factors, {cfg.epochs} epochs (VAE long: "
        f"{cfg.epochs * cfg.vae_long_factor}), M = {cfg.n_sleep}. MAP latents by "
        f"{cfg.map_steps} Adam steps; {cfg.flip_prob:.0%} of pixels flipped for denoising; "
        f"log p(x) by importance sampling ({cfg.is_samples} Laplace-proposal draws per image)."
    )  # fmt: skip
    return [("Test-set reconstruction, denoising and log-likelihood", table), ("Notes", notes)]


def plot(
    models: dict[str, BernoulliNMF], results: dict[str, dict[str, Any]], test: torch.Tensor,
    noisy: torch.Tensor, out: Path,
) -> list[str]:  # fmt: skip
    plt = _common.pyplot()
    if plt is None:
        return []
    files = []
    shown = ("al", "vae")
    k = models["al"].n_factors
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(
        len(shown) * rows, cols, figsize=(1.3 * cols, 1.4 * rows * len(shown)), squeeze=False
    )
    for i, method in enumerate(shown):
        w = models[method].weight().detach().cpu().numpy()  # (64, k)
        order = np.argsort(-w.sum(0))
        for j in range(rows * cols):
            ax = axes[i * rows + j // cols][j % cols]
            ax.axis("off")
            if j < k:
                ax.imshow(w[:, order[j]].reshape(8, 8), cmap="magma", vmin=0)
            if j == 0:
                ax.set_title(LABELS[method], fontsize=8, loc="left")
    fig.suptitle("non-negative factors (columns of W, sorted by mass)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "factors.png", dpi=110)
    plt.close(fig)
    files.append("factors.png")

    n_show = 10
    panels = [("clean", test.cpu().numpy()), ("noisy", noisy.cpu().numpy())]
    for method in shown:
        panels += [(f"{method} recon", results[method]["recon"]),
                   (f"{method} denoised", results[method]["denoised"])]  # fmt: skip
    fig, axes = plt.subplots(len(panels), n_show, figsize=(n_show, len(panels) * 1.05))
    for r, (title, imgs) in enumerate(panels):
        for c in range(n_show):
            ax = axes[r][c]
            ax.imshow(imgs[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=110)
    plt.close(fig)
    files.append("examples.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in (
        (axes[0], "recon_mse_per_image", "reconstruction MSE per test image"),
        (axes[1], "denoise_mse_per_image", "denoising MSE per test image"),
    ):
        top = max(float(np.quantile(results[m][key], 0.99)) for m in ("al", "vae", "vae_long"))
        bins = np.linspace(0, top, 40)
        for method in ("al", "vae", "vae_long"):
            ax.hist(results[method][key], bins=bins, histtype="step", label=LABELS[method])
        ax.set_title(title)
        ax.set_xlabel("MSE")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "mse_histograms.png", dpi=110)
    plt.close(fig)
    files.append("mse_histograms.png")
    return files
