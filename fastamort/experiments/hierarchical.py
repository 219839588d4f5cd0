"""hierarchical: a Gaussian mixture warped by a network, learned on the pinwheel data (paper §5.7).

Data: the pinwheel set (Johnson et al. 2016, the SVAE paper), made by :func:`pinwheel` from
the seed: ``n_arms`` = 5 arms; point i of arm a has radial coordinate r = 1 + 0.3·ε₁ and
tangential t = 0.1·ε₂ (ε ~ N(0, 1)), rotated by the angle 2πa/5 + 0.2·exp(r), then all
points are centred by the training mean. 5 × 500 training points (the paper's size) and an
independent 5 × 200 test set (other seed, same centring). The arm of each point is kept as
its label.

Model: :class:`fastamort.models.HierarchicalMixture` with the paper's structure, K = 10
clusters c ~ Cat(softmax α), z | c ~ N(μ_c, L_c L_cᵀ) in 2-d, x | z ~ N(MLP(z), diag σ²),
MLP 2 → 20 → 2 (ReLU), σ ≥ 0.01; initial σ = e⁻¹ (as the authors), μ_c ~ N(0, I),
Σ_c = 0.5² I, π uniform. Maximum likelihood: the authors' MAP priors (sparsity on π,
inverse-Wishart-like on Σ) are not used.

Training: :class:`fastamort.AmortisedLearner`, exponential-family estimator (x | z Gaussian),
Gaussian kernel on raw x (median heuristic, lengthscale and λ learned on held-out sleep
samples; λ starts at 1e-2 as in the authors' code), M = 1000 sleep samples, M' = 200
held-out, batch 200, 200 epochs, Adam for the model with lr 1e-2 for the first two thirds of
the steps and 1e-3 after (the authors' constant 1e-3 needs their 1000–3000 epochs), kernel
lr 1e-2.

Baseline ``vae`` (same model, same initial parameters, data, epochs, batch and learning-rate
schedule): a variational auto-encoder whose encoder has a categorical factor over the
cluster and a Gaussian over z for each cluster, q(c, z | x) = q(c|x)·N(z; m_c(x), diag s_c(x)²)
(:class:`MixtureEncoder`, one tanh layer of 64). Its ELBO sums exactly over the K clusters
(no score-function gradient) with one reparameterised z per cluster; θ and φ ascend it
together (Adam, the model's learning rate for both).

Metrics (test set unless said otherwise):

* ``*_test_loglik``: mean log p(x) per point. For the model, by importance sampling that
  enumerates the clusters: p(x) = Σ_c π_c p(x|c), p(x|c) estimated with S draws from the
  cluster's own prior N(μ_c, Σ_c) as the proposal (S = 5000 per cluster, shared by all test
  points; in a 2-d latent this is adequate; ``al_is_ess_median`` reports the median effective
  sample size over the test points as a check). Compared with the same model untrained
  (``untrained_test_loglik``) and with scikit-learn's ``GaussianMixture`` (K = 10 full
  covariances, fitted by EM on the training points, exact log-likelihood; a reference, not a
  latent-variable model of the same family).
* ``*_ari``: adjusted Rand index between the arm labels and the most probable cluster of each
  point (the models, amortised and VAE alike: argmax_c π_c p(x|c) by the same importance
  sampling; the GMM: its ``predict``). K = 10 clusters against 5 arms, so a split arm
  lowers the ARI.
* ``al_active_clusters``: clusters that own at least 2 % of the test points.
* The held-out log-likelihood during training (``details.curve``).

Plots: test data coloured by arm and by inferred cluster (amortised, VAE, GMM), samples of
both trained models coloured by cluster over the data, mixing weights, learning curve.

Quick configuration: 5 × 150 training points, 5 × 100 test points, M = 400, 40 epochs of
batch 150, S = 1000 per cluster.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import fastamort
from fastamort.models.hierarchical import HierarchicalMixture

from . import _common

NAME = "hierarchical"


@dataclass(frozen=True)
class Config:
    """Sizes and budgets of one run."""

    n_arms: int = 5
    n_per_arm: int = 500
    n_test_per_arm: int = 200
    radial_std: float = 0.3
    tangential_std: float = 0.1
    rate: float = 0.2
    n_clusters: int = 10
    hidden: int = 20
    n_sleep: int = 1000
    n_held_out: int = 200
    lam: float = 1e-2
    lr: float = 1e-2
    kernel_lr: float = 1e-2
    epochs: int = 200
    lr_decay_at: float = 2 / 3  # fraction of the steps after which lr is divided by 10
    batch_size: int = 200
    eval_samples: int = 5000  # S per cluster (final evaluation)
    curve_samples: int = 1000  # S per cluster (learning curve)
    curve_points: int = 15
    n_plot_samples: int = 2000
    encoder_hidden: int = 64


FULL = Config()
QUICK = Config(
    n_per_arm=150, n_test_per_arm=100, n_sleep=400, n_held_out=100, epochs=40,
    batch_size=150, eval_samples=1000, curve_samples=500, curve_points=5, n_plot_samples=1000,
)  # fmt: skip


def pinwheel(
    n_per_arm: int, *, n_arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1,
    rate: float = 0.2, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The pinwheel data set: (x (n_arms·n_per_arm, 2) float64, arm labels (n,) int64).

    Each point starts at (1 + radial_std·ε₁, tangential_std·ε₂) and is rotated by
    2π·arm/n_arms + rate·exp(radial coordinate), so the arms curl outwards. Not centred.
    """
    for name, v in (("n_per_arm", n_per_arm), ("n_arms", n_arms)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_arms), n_per_arm)
    radial = 1.0 + radial_std * rng.standard_normal(labels.size)
    tangential = tangential_std * rng.standard_normal(labels.size)
    angle = 2 * np.pi * labels / n_arms + rate * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    x = np.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], axis=1)
    order = rng.permutation(labels.size)
    return x[order], labels[order]


def make_data(cfg: Config, seed: int) -> dict[str, np.ndarray]:
    """Training and test points (centred by the training mean) with their arm labels."""
    kw = dict(n_arms=cfg.n_arms, radial_std=cfg.radial_std, tangential_std=cfg.tangential_std,
              rate=cfg.rate)  # fmt: skip
    x, y = pinwheel(cfg.n_per_arm, seed=_common.sub_seed(seed, "train"), **kw)
    xt, yt = pinwheel(cfg.n_test_per_arm, seed=_common.sub_seed(seed, "test"), **kw)
    centre = x.mean(0)
    return {"x": x - centre, "y": y, "x_test": xt - centre, "y_test": yt}


@torch.no_grad()
def evaluate(
    model: HierarchicalMixture, x: torch.Tensor, labels: np.ndarray, n_samples: int, seed: int
) -> dict[str, Any]:
    """Held-out log-likelihood, most probable clusters, ARI and the IS effective sample size."""
    from sklearn.metrics import adjusted_rand_score

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        joint = model.cluster_log_likelihoods(x, n_samples).double()  # (N, K)
    loglik = torch.logsumexp(joint, 1)
    clusters = joint.argmax(1).cpu().numpy()
    ess = _best_cluster_ess(model, x, clusters, n_samples, seed)
    return {
        "loglik": float(loglik.mean()),
        "clusters": clusters,
        "ari": float(adjusted_rand_score(labels, clusters)),
        "ess_median": float(np.median(ess)),
        "ess_p05": float(np.quantile(ess, 0.05)),
    }


@torch.no_grad()
def _best_cluster_ess(
    model: HierarchicalMixture, x: torch.Tensor, clusters: np.ndarray, n_samples: int, seed: int
) -> np.ndarray:
    """Effective sample size (Σw)²/Σw² of the prior-proposal weights in each point's most
    probable cluster, (N,): S means perfect, 1 means one sample carries the estimate."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        k, d = model.n_clusters, model.latent_dim
        eps = torch.randn(k, n_samples, d, dtype=model.means.dtype, device=model.means.device)
        z = model.means[:, None, :] + (model.scale_tril()[:, None] @ eps[..., None])[..., 0]
        mu = model.decode(z)  # (K, S, D)
    var = model.std() ** 2
    out = []
    c_all = torch.as_tensor(clusters, device=x.device)
    for xs, cs in zip(x.split(256), c_all.split(256), strict=True):
        logw = -0.5 * (((xs[:, None, :] - mu[cs]) ** 2) / var).sum(-1)  # (n, S)
        logw = logw.double()
        out.append(torch.exp(2 * torch.logsumexp(logw, 1) - torch.logsumexp(2 * logw, 1)))
    return torch.cat(out).cpu().numpy()


class MixtureEncoder(nn.Module):
    """q(c, z | x) = Cat(c; softmax g(x))·N(z; m_c(x), diag s_c(x)²): an MLP (one tanh layer)
    gives K logits and, per cluster, a mean and a log standard deviation (clamped to
    [-7, 3]) of z. The last layer starts at zero: uniform q(c|x), N(0, I) for every z."""

    def __init__(self, obs_dim: int, n_clusters: int, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.k, self.d = n_clusters, latent_dim
        last = nn.Linear(hidden, n_clusters * (1 + 2 * latent_dim))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log q(c|x) (B, K), means (B, K, d), log-stds (B, K, d))."""
        out = self.net(x)
        logits, rest = out[:, : self.k], out[:, self.k :].reshape(-1, self.k, 2 * self.d)
        mean, log_std = rest.split(self.d, dim=-1)
        return torch.log_softmax(logits, -1), mean, log_std.clamp(-7.0, 3.0)


def mixture_elbo(
    model: HierarchicalMixture, encoder: MixtureEncoder, x: torch.Tensor
) -> torch.Tensor:
    """Per-datum ELBO (B,): exact sum over the clusters, one reparameterised z per cluster."""
    log_qc, mean, log_std = encoder(x)
    b, k, d = mean.shape
    eps = torch.randn_like(mean)
    z = mean + torch.exp(log_std) * eps
    log_qz = (-0.5 * eps * eps - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B, K)
    c = torch.arange(k, device=x.device).expand(b, k).reshape(-1)
    log_p = model.log_joint((c, z.reshape(b * k, d)), x.repeat_interleave(k, 0)).reshape(b, k)
    return (torch.exp(log_qc) * (log_p - log_qc - log_qz)).sum(-1)


def train_vae(
    model: HierarchicalMixture, x: torch.Tensor, cfg: Config, order_seed: int, progress: bool
) -> float:
    """Trains ``model`` and a fresh :class:`MixtureEncoder` on −ELBO; returns the seconds."""
    encoder = MixtureEncoder(x.shape[1], model.n_clusters, model.latent_dim,
                             cfg.encoder_hidden).to(device=x.device, dtype=x.dtype)  # fmt: skip
    opt = torch.optim.Adam([*model.parameters(), *encoder.parameters()], lr=cfg.lr)
    per_epoch = math.ceil(x.shape[0] / cfg.batch_size)
    total = cfg.epochs * per_epoch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    step = 0
    with tqdm(total=total, desc="vae", unit="step", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            g = torch.Generator().manual_seed(order_seed * 1_000_003 + epoch)
            order = torch.randperm(x.shape[0], generator=g).to(x.device)
            for i in range(per_epoch):
                step += 1
                if step == int(cfg.lr_decay_at * total) + 1:
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr / 10
                batch = x[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
                loss = -mixture_elbo(model, encoder, batch).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
    return time.perf_counter() - t0


def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None,
) -> dict[str, float]:  # fmt: skip
    """Runs the experiment, writes the files into ``out``, returns the flat metrics."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture as SkGMM

    cfg = config or (QUICK if quick else FULL)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    data = make_data(cfg, seed)
    x = torch.tensor(data["x"], dtype=torch.float32, device=device)
    x_test = torch.tensor(data["x_test"], dtype=torch.float32, device=device)
    eval_seed = _common.sub_seed(seed, "eval")

    torch.manual_seed(_common.sub_seed(seed, "model"))
    model = HierarchicalMixture(2, cfg.n_clusters, hidden=cfg.hidden).to(device)
    vae_model = copy.deepcopy(model)
    untrained = evaluate(model, x_test, data["y_test"], cfg.eval_samples, eval_seed)

    # reference: EM Gaussian mixture with the same K on the raw points
    gmm, gmm_s = _common.timed(
        lambda: SkGMM(cfg.n_clusters, covariance_type="full", n_init=1,
                      random_state=_common.sub_seed(seed, "gmm") % 2**31).fit(data["x"]),
        device,
    )  # fmt: skip
    gmm_test = float(gmm.score(data["x_test"]))
    gmm_clusters = gmm.predict(data["x_test"])
    gmm_ari = float(adjusted_rand_score(data["y_test"], gmm_clusters))

    torch.manual_seed(_common.sub_seed(seed, "train"))
    learner = fastamort.AmortisedLearner(
        model, n_sleep=cfg.n_sleep, n_held_out=cfg.n_held_out, lam=cfg.lam, lr=cfg.lr,
        kernel_lr=cfg.kernel_lr, seed=_common.sub_seed(seed, "order"),
    )  # fmt: skip
    steps_per_epoch = math.ceil(x.shape[0] / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    every = max(1, total // cfg.curve_points)
    curve: list[dict[str, float]] = []
    eval_time = [0.0]

    def record_curve(lrn: fastamort.AmortisedLearner, rec: dict[str, Any]) -> None:
        if rec["step"] == int(cfg.lr_decay_at * total):
            for group in lrn.optimizer.param_groups:
                group["lr"] = cfg.lr / 10
        if rec["step"] % every == 0 or rec["step"] == total:
            t0 = time.perf_counter()
            with torch.random.fork_rng():
                torch.manual_seed(eval_seed + rec["step"])
                ll = float(model.log_likelihood(x_test, cfg.curve_samples).double().mean())
            eval_time[0] += time.perf_counter() - t0
            curve.append({"step": rec["step"], "epoch": rec["epoch"] + 1, "test_loglik": ll,
                          "objective": rec["objective"], "lengthscale": rec["lengthscale"],
                          "lam": rec["lam"]})  # fmt: skip

    t0 = time.perf_counter()
    history = learner.fit(
        x, epochs=cfg.epochs, batch_size=cfg.batch_size, progress=progress,
        callbacks=[record_curve],
    )  # fmt: skip
    train_s = time.perf_counter() - t0 - eval_time[0]
    trained = evaluate(model, x_test, data["y_test"], cfg.eval_samples, eval_seed)
    torch.manual_seed(_common.sub_seed(seed, "vae"))
    vae_s = train_vae(vae_model, x, cfg, _common.sub_seed(seed, "order"), progress)
    vae = evaluate(vae_model, x_test, data["y_test"], cfg.eval_samples, eval_seed)
    vae_train_ll = evaluate(vae_model, x, data["y"], cfg.eval_samples, eval_seed)["loglik"]
    train_ll = evaluate(model, x, data["y"], cfg.eval_samples, eval_seed)["loglik"]
    counts = np.bincount(trained["clusters"], minlength=cfg.n_clusters)
    active = int((counts >= 0.02 * len(trained["clusters"])).sum())

    metrics = {
        "al_test_loglik": trained["loglik"],
        "al_train_loglik": train_ll,
        "untrained_test_loglik": untrained["loglik"],
        "gmm_test_loglik": gmm_test,
        "gmm_train_loglik": float(gmm.score(data["x"])),
        "al_ari": trained["ari"],
        "untrained_ari": untrained["ari"],
        "gmm_ari": gmm_ari,
        "al_active_clusters": float(active),
        "al_is_ess_median": trained["ess_median"],
        "al_is_ess_p05": trained["ess_p05"],
        "al_noise_std": float(model.std().detach().mean()),
        "al_train_s": train_s,
        "al_seconds_per_step": train_s / max(1, len(history)),
        "gmm_fit_s": gmm_s,
        "vae_test_loglik": vae["loglik"],
        "vae_train_loglik": vae_train_ll,
        "vae_ari": vae["ari"],
        "vae_is_ess_median": vae["ess_median"],
        "vae_train_s": vae_s,
    }
    with torch.no_grad():
        weights = model.mixing_weights().cpu().tolist()
    plots = plot(
        model, vae_model, data, trained["clusters"], vae["clusters"], gmm_clusters, curve, cfg,
        seed, out,
    )  # fmt: skip
    details = {
        "curve": curve,
        "mixing_weights": weights,
        "cluster_counts_test": counts.tolist(),
        "noise_std": model.std().detach().cpu().tolist(),
        "final_lengthscale": float(learner.kernel.lengthscale.detach()),
        "final_lambda": learner.lam,
        "steps": len(history),
        "plots": plots,
    }
    _common.write_metrics(out, metrics, details, env)
    _common.write_results_md(out, NAME, results_sections(metrics, cfg, quick, seed, device))
    return metrics


def results_sections(
    m: dict[str, float], cfg: Config, quick: bool, seed: int, device: torch.device
) -> list[tuple[str, str]]:
    table = _common.markdown_table(
        ["model", "test log-lik / point", "train log-lik / point", "ARI (arms vs clusters)"],
        [
            ["amortised learning", m["al_test_loglik"], m["al_train_loglik"], m["al_ari"]],
            ["same model, VAE (categorical + Gaussian encoder)", m["vae_test_loglik"],
             m["vae_train_loglik"], m["vae_ari"]],
            ["same model, untrained", m["untrained_test_loglik"], "", m["untrained_ari"]],
            [f"sklearn GaussianMixture (K={cfg.n_clusters})", m["gmm_test_loglik"],
             m["gmm_train_loglik"], m["gmm_ari"]],
        ],
    )  # fmt: skip
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. {cfg.n_arms}×{cfg.n_per_arm} training and "
        f"{cfg.n_arms}×{cfg.n_test_per_arm} test points; {cfg.epochs} epochs "
        f"({m['al_train_s']:.0f} s, {m['al_seconds_per_step']:.3f} s/step; VAE "
        f"{m['vae_train_s']:.0f} s), M = {cfg.n_sleep}. "
        f"Model log-likelihoods by importance sampling with the cluster priors as proposals, "
        f"{cfg.eval_samples} samples per cluster (median ESS in the best cluster "
        f"{m['al_is_ess_median']:.0f}, 5 % quantile {m['al_is_ess_p05']:.0f}). "
        f"Active clusters (≥ 2 % of test points): {m['al_active_clusters']:.0f}; "
        f"noise σ {m['al_noise_std']:.3f}."
    )  # fmt: skip
    return [("Held-out log-likelihood and cluster recovery", table), ("Notes", notes)]


def plot(
    model: HierarchicalMixture, vae_model: HierarchicalMixture, data: dict[str, np.ndarray],
    clusters: np.ndarray, vae_clusters: np.ndarray, gmm_clusters: np.ndarray,
    curve: list[dict[str, float]], cfg: Config, seed: int, out: Path,
) -> list[str]:  # fmt: skip
    plt = _common.pyplot()
    if plt is None:
        return []
    xt = data["x_test"]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 3, figsize=(14.5, 9.4))
    axes = axes.ravel()
    axes[0].scatter(xt[:, 0], xt[:, 1], s=4, c=cmap(data["y_test"] % 10))
    axes[0].set_title("test data, coloured by arm")
    axes[1].scatter(xt[:, 0], xt[:, 1], s=4, c=cmap(clusters % 10))
    axes[1].set_title("test data, by inferred cluster (amortised)")
    axes[2].scatter(xt[:, 0], xt[:, 1], s=4, c=cmap(gmm_clusters % 10))
    axes[2].set_title(f"test data, by GaussianMixture(K={cfg.n_clusters}) cluster")
    axes[3].scatter(xt[:, 0], xt[:, 1], s=4, c=cmap(vae_clusters % 10))
    axes[3].set_title("test data, by inferred cluster (VAE)")
    for ax, mdl, name in ((axes[4], model, "amortised"), (axes[5], vae_model, "VAE")):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(_common.sub_seed(seed, "plot"))
            (c, _), xs = mdl.sample(cfg.n_plot_samples)
        c, xs = c.cpu().numpy(), xs.float().cpu().numpy()
        ax.scatter(data["x"][:, 0], data["x"][:, 1], s=3, c="lightgray")
        ax.scatter(xs[:, 0], xs[:, 1], s=3, c=cmap(c % 10))
        ax.set_title(f"samples of the model ({name}), by cluster")
    lim = 1.15 * np.abs(data["x"]).max()
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "clusters.png", dpi=100)
    plt.close(fig)
    files = ["clusters.png"]

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    weights = model.mixing_weights().detach().cpu().numpy()
    idx = np.arange(len(weights))
    axes[0].bar(idx - 0.2, weights, width=0.4, color=cmap(idx % 10), label="amortised")
    vae_weights = vae_model.mixing_weights().detach().cpu().numpy()
    axes[0].bar(idx + 0.2, vae_weights, width=0.4, color=cmap(idx % 10), alpha=0.4,
                hatch="//", label="VAE")  # fmt: skip
    axes[0].legend(fontsize=8)
    axes[0].set_xlabel("cluster")
    axes[0].set_ylabel("mixing weight π_c")
    axes[0].set_title("learned mixing weights")
    if curve:
        axes[1].plot([p["epoch"] for p in curve], [p["test_loglik"] for p in curve], marker="o")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("test log-likelihood / point")
    axes[1].set_title("held-out log-likelihood during training")
    axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    plt.close(fig)
    files.append("training.png")
    return files
