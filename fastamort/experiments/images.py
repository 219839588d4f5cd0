"""images: sample quality (LeNet-FID, KID) and test log-likelihood of digit generators

Paper §5.4 ("Experiment IV: image generation") at laptop scale: scikit-learn's 8×8 digits
instead of 32×32 MNIST, an MLP generator instead of the DCGAN, a small CNN trained here as
the feature network of the FID instead of the authors' (unreleased) LeNet-5.

Data (:mod:`fastamort.experiments._digits`): the 1797 digits, one fixed split (seed
``split_seed``, independent of ``--seed``): ``n_test`` = 500 test images, 1297 training
images, in two versions:

* ``binary``: threshold binarisation, pixel ≥ 8 of 16 (deterministic; the authors binarise
  MNIST stochastically, which on 8×8 digits with their many grey pixels gives very noisy
  images); Bernoulli likelihood.
* ``continuous``: uniform dequantisation with a fixed seed, (pixel + u)/17, u ~ U(0, 1), values
  in (0, 1); Gaussian likelihood with one learned noise σ shared by all pixels (initial
  ``init_std``; as the authors' code) and means sigmoid(MLP(z)).

Model (:class:`fastamort.models.image_generator.MLPGenerator`): z ~ N(0, I_8), decoder MLP
8 → 128 → 128 → 64 (tanh). Every method starts from the same generator initialisation
(per seed and variant), sees the same mini-batches in the same order (batch 100, reshuffled
each epoch) and takes the same number of steps ``steps`` with Adam (lr ``lr``) on θ:

* ``amortised``: :class:`fastamort.AmortisedLearner`, exponential-family estimator,
  M = ``n_sleep`` sleep samples, Gaussian kernel on the raw pixels (median heuristic), the
  kernel lengthscale and λ learned on ``n_held_out`` held-out sleep samples (kernel lr 1e-2);
  with ``features="linear-bn"`` the kernel is Gaussian on learned Linear(64 → ``feature_width``)
  + BatchNorm features instead, trained with it (the paper's image kernel, PAPER.md §5.10;
  :mod:`fastamort.experiments._features`);
* ``vae``, ``iwae`` (k = 5), ``rws`` (k = 5, wake-φ, "wake-wake"):
  :class:`fastamort.baselines.BaselineLearner` with a Gaussian encoder (MLP 64 → 128 → 128,
  tanh), same lr for θ and φ.

Wall-clock seconds of the training steps are reported per method (``*_train_s``; evaluation
excluded). The amortised step costs far more than a baseline step (an M×M kernel solve per
step), so equal steps is *not* equal time: it is the protocol of the paper's figure (metrics
against epoch).

Sample quality ("LeNet-FID"): a CNN (:class:`~fastamort.experiments._digits.DigitClassifier`)
trained for ``classifier_epochs`` on the training split only (both versions of each image;
fixed seed, the same network for every method and seed); features = its 64-d penultimate
layer, divided by one fixed scale. FID and KID (unbiased MMD², cubic polynomial kernel,
Bińkowski et al. 2018) between ``n_fid_samples`` model samples and the 500 test images; for
``binary`` the samples are Bernoulli draws (binary images like the test set), for
``continuous`` the decoder means (as the authors, who used decoder means). The floor:
the same distances between the training split and the test split (``<variant>_data_fid``).
FID is also measured at ``checkpoints`` evenly spaced steps during training (step 0 = the
initialisation; 1297 samples each).

Test log-likelihood: importance sampling, log p(x) ≈ log (1/K) Σ_k p(z_k, x)/q(z_k|x) with
K = ``is_samples`` per test image (an estimate whose expectation is a *lower bound* on
log p(x), by Jensen). Amortised learning has no encoder, so for every method (for a fair
comparison) a post-hoc proposal q is fitted to the frozen final generator: a fresh Gaussian
encoder (same architecture and initialisation for all methods) trained for
``proposal_steps`` Adam steps (lr ``lr``, batch 100) on the IWAE-5 bound of the training
split (``<variant>_<method>_test_ll``). The baselines are also evaluated with their own
jointly trained encoders (``..._test_ll_own_encoder``). Units: nats per image; for
``continuous`` a density on [0, 1]^64 (the discrete log-probability of the 0..16 pixels is
at least this minus 64·log 17 = 181.3 nats).

Seeds: ``seeds`` = 3 replicates, seed r = ``sub_seed(--seed, "replicate", r)``; reported as
mean ± std over them (std with n − 1). The quick configuration uses one replicate, tiny
budgets and K = 100.

Flat metrics: ``classifier_accuracy`` (continuous test split; ``_binary``: binary test split);
for ``<variant>`` ∈ {binary, continuous}: ``<variant>_data_fid``/``_data_kid`` and for
``<method>`` ∈ {amortised, vae, iwae, rws}: ``<variant>_<method>_fid``, ``_fid_std``,
``_kid``, ``_kid_std``, ``_test_ll``, ``_test_ll_std``, ``_fid_init`` (step 0),
``_train_s``; baselines also ``_test_ll_own_encoder`` (+ ``_std``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastamort
from fastamort.baselines import BaselineLearner, Encoder, encoder_for
from fastamort.baselines._common import log_joint_particles, log_mean_exp
from fastamort.models.image_generator import MLPGenerator

from . import _common, _features
from . import _digits as digits

NAME = "images"
VARIANTS = ("binary", "continuous")
LIKELIHOOD = {"binary": "bernoulli", "continuous": "gaussian"}
METHODS = ("amortised", "vae", "iwae", "rws")
BASELINES = ("vae", "iwae", "rws")
LABELS = {"amortised": "amortised", "vae": "VAE", "iwae": "IWAE (k=5)", "rws": "RWS (k=5)"}


@dataclasses.dataclass(frozen=True)
class Config:
    seeds: int = 3
    n_test: int = 500
    split_seed: int = 0
    latent_dim: int = 8
    hidden: tuple[int, ...] = (128, 128)
    init_std: float = 0.3
    steps: int = 400
    batch_size: int = 100
    lr: float = 3e-3
    n_sleep: int = 1000
    n_held_out: int = 200
    kernel_lr: float = 1e-2
    k: int = 5
    encoder_hidden: tuple[int, ...] = (128, 128)
    checkpoints: int = 6
    n_fid_samples: int = 1297
    fid_draws: int = 3
    proposal_steps: int = 400
    is_samples: int = 1000
    is_chunk: int = 25
    classifier_epochs: int = 15
    n_grid: int = 36
    features: str = "none"  # the amortised learner's kernel: "none" or "linear-bn"
    feature_width: int = 100


FULL = Config()
QUICK = Config(
    seeds=1, steps=100, n_sleep=300, n_held_out=50, checkpoints=3, n_fid_samples=500,
    proposal_steps=40, is_samples=100, is_chunk=100, classifier_epochs=4,
)  # fmt: skip


# ------------------------------------------------------------------------------------------
def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Index batches for ``steps`` steps: a fresh permutation per epoch, remainder dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch)]
    return out[:steps]


def model_images(gen: MLPGenerator, n: int, variant: str) -> torch.Tensor:
    """What the sample-quality metrics see: Bernoulli draws (binary) or decoder means."""
    with torch.no_grad():
        z, x = gen.sample(n)
        return x if variant == "binary" else gen.mean(z)


class Scorer:
    """FID and KID of image sets against one variant's test split."""

    def __init__(self, net: digits.DigitClassifier, test: torch.Tensor):
        self.net = net
        self.test_features = digits.features(net, test)

    def __call__(self, images: torch.Tensor) -> tuple[float, float]:
        f = digits.features(self.net, images)
        return (
            digits.frechet_distance(f, self.test_features),
            digits.kernel_inception_distance(f, self.test_features),
        )


@torch.no_grad()
def test_log_likelihood(
    gen: MLPGenerator, encoder: Encoder, x: torch.Tensor, k: int, chunk: int
) -> float:
    """Mean over x of log (1/K) Σ_k p(z_k, x)/q(z_k|x), z_k ~ q(·|x): nats per image."""
    values = []
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        z, log_q = encoder.sample_and_log_prob(xb, k)
        values.append(log_mean_exp(log_joint_particles(gen, z, xb) - log_q, 0))
    return float(torch.cat(values).mean())


def fit_proposal(
    gen: MLPGenerator, train: torch.Tensor, cfg: Config, seed: int
) -> tuple[Encoder, float]:
    """A fresh Gaussian encoder fitted to the frozen ``gen`` by the IWAE-k bound; (enc, s)."""
    torch.manual_seed(_common.sub_seed(seed, "proposal-init"))
    enc = encoder_for(gen, hidden=cfg.encoder_hidden)
    learner = BaselineLearner(gen, enc, "iwae", k=cfg.k, lr=cfg.lr, train_model=False)
    torch.manual_seed(_common.sub_seed(seed, "proposal-train"))
    batches = batch_order(train.shape[0], cfg.proposal_steps, cfg.batch_size, seed)
    seconds = 0.0
    for idx in batches:
        seconds += learner.step(train[idx])["seconds"]
    return enc.eval(), seconds


def train_method(
    method: str, gen0: MLPGenerator, data: digits.DigitsSplit, variant: str, cfg: Config,
    seed: int, scorer: Scorer, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Trains one method from ``gen0``'s initialisation; returns its record (+ the model)."""
    gen = copy.deepcopy(gen0)
    train = data.get(variant, "train").to(device)
    encoder = None
    if method == "amortised":
        kernel = _features.feature_kernel(
            cfg.features, digits.N_PIXELS, cfg.feature_width, seed=_common.sub_seed(seed, variant),
            like=train,
        )  # fmt: skip
        learner: Any = fastamort.AmortisedLearner(
            gen, kernel=kernel, n_sleep=cfg.n_sleep, n_held_out=cfg.n_held_out, lr=cfg.lr,
            kernel_lr=cfg.kernel_lr, estimator="expfam", seed=seed,
        )  # fmt: skip
    else:
        torch.manual_seed(_common.sub_seed(seed, variant, "encoder-init"))
        encoder = encoder_for(gen, hidden=cfg.encoder_hidden)
        learner = BaselineLearner(gen, encoder, method, k=cfg.k, lr=cfg.lr, seed=seed)
    batches = batch_order(train.shape[0], cfg.steps, cfg.batch_size,
                          _common.sub_seed(seed, variant, "batches"))  # fmt: skip
    marks = sorted({round(i * cfg.steps / (cfg.checkpoints - 1)) for i in range(cfg.checkpoints)})
    steps_per_epoch = max(1, train.shape[0] // cfg.batch_size)
    curve: list[dict[str, float]] = []

    def checkpoint(step: int) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(_common.sub_seed(seed, variant, "checkpoint", step))
            fid, kid = scorer(model_images(gen, cfg.n_fid_samples, variant))
        curve.append({"step": step, "epoch": step / steps_per_epoch, "fid": fid, "kid": kid})

    torch.manual_seed(_common.sub_seed(seed, variant, method, "train"))
    if 0 in marks:
        checkpoint(0)
    seconds, objectives = 0.0, []
    for step, idx in enumerate(batches, start=1):
        record = learner.step(train[idx], epoch=(step - 1) // steps_per_epoch)
        seconds += record["seconds"]
        objectives.append(record.get("objective", -record.get("loss", math.nan)))
        if step in marks:
            checkpoint(step)
    gen.eval()
    torch.manual_seed(_common.sub_seed(seed, variant, method, "final"))
    scores = [scorer(model_images(gen, cfg.n_fid_samples, variant)) for _ in range(cfg.fid_draws)]
    fid = statistics.fmean(f for f, _ in scores)
    kid = statistics.fmean(k for _, k in scores)
    grid = model_images(gen, cfg.n_grid, variant).cpu()
    test = data.get(variant, "test").to(device)
    proposal, proposal_s = fit_proposal(gen, train, cfg, _common.sub_seed(seed, variant))
    torch.manual_seed(_common.sub_seed(seed, variant, method, "is"))
    record: dict[str, Any] = {
        "fid": fid, "kid": kid, "train_s": seconds, "curve": curve,
        "final_objective": statistics.fmean(objectives[-max(1, len(objectives) // 10) :]),
        "test_ll": test_log_likelihood(gen, proposal, test, cfg.is_samples, cfg.is_chunk),
        "proposal_s": proposal_s,
    }  # fmt: skip
    if encoder is not None:
        record["test_ll_own_encoder"] = test_log_likelihood(
            gen, encoder.eval(), test, cfg.is_samples, cfg.is_chunk
        )
    if method == "amortised":
        record["lam"] = learner.lam
        record["lengthscale"] = float(learner.kernel.lengthscale.detach())
    if LIKELIHOOD[variant] == "gaussian":
        record["noise_std"] = float(gen.likelihood.log_std.detach().exp().mean())
    record["_grid"] = grid
    return record


# ------------------------------------------------------------------------------------------
def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {
        "classifier_accuracy": results["classifier"]["accuracy_continuous"],
        "classifier_accuracy_binary": results["classifier"]["accuracy_binary"],
    }
    for variant in VARIANTS:
        res = results[variant]
        metrics[f"{variant}_data_fid"] = res["data"]["fid"]
        metrics[f"{variant}_data_kid"] = res["data"]["kid"]
        for method in METHODS:
            runs = res["methods"][method]["replicates"]
            key = f"{variant}_{method}"
            stats = ["fid", "kid", "test_ll", "train_s"]
            if method in BASELINES:
                stats.append("test_ll_own_encoder")
            for stat in stats:
                m, s = _common.mean_std([r[stat] for r in runs])
                metrics[f"{key}_{stat}"], metrics[f"{key}_{stat}_std"] = m, s
            metrics[f"{key}_fid_init"] = statistics.fmean(r["curve"][0]["fid"] for r in runs)
    return metrics


def results_markdown(metrics: dict[str, float], cfg: Config) -> list[tuple[str, str]]:
    sections = []
    for variant in VARIANTS:
        rows = [["data (train vs test)", f"{metrics[f'{variant}_data_fid']:.3g}",
                 f"{metrics[f'{variant}_data_kid']:.3g}", "", "", "", ""]]  # fmt: skip
        for method in METHODS:
            key = f"{variant}_{method}"
            own = (
                f"{metrics[f'{key}_test_ll_own_encoder']:.2f} ± "
                f"{metrics[f'{key}_test_ll_own_encoder_std']:.2f}"
                if method in BASELINES
                else "n/a"
            )
            rows.append([
                LABELS[method],
                f"{metrics[f'{key}_fid']:.3g} ± {metrics[f'{key}_fid_std']:.2g}",
                f"{metrics[f'{key}_kid']:.3g} ± {metrics[f'{key}_kid_std']:.2g}",
                f"{metrics[f'{key}_test_ll']:.2f} ± {metrics[f'{key}_test_ll_std']:.2f}",
                own, f"{metrics[f'{key}_fid_init']:.3g}", f"{metrics[f'{key}_train_s']:.1f}",
            ])  # fmt: skip
        table = _common.markdown_table(
            ["method", "FID", "KID", "test log-lik. (post-hoc q)", "test log-lik. (own q)",
             "FID at step 0", "train s"],
            rows,
        )  # fmt: skip
        body = (
            f"{LIKELIHOOD[variant].capitalize()} likelihood; mean ± std over {cfg.seeds} "
            f"seed(s); {cfg.steps} steps of batch {cfg.batch_size} for every method; FID/KID of "
            f"{cfg.n_fid_samples} samples against the {cfg.n_test} test images (LeNet-style "
            f"features); test log-likelihood in nats per image by importance sampling with "
            f"K = {cfg.is_samples} (lower bounds in expectation).\n\n" + table
        )
        sections.append((f"{variant} digits", body))
    return sections


def plot(results: dict[str, Any], data: digits.DigitsSplit, cfg: Config, out: Path) -> list[str]:
    plt = _common.pyplot()
    if plt is None:
        return []
    files = []
    side = digits.IMAGE_SIDE
    cols = math.ceil(math.sqrt(cfg.n_grid))
    step = side + 1

    def mosaic(images: torch.Tensor) -> np.ndarray:
        imgs = images[: cols * cols].reshape(-1, side, side).numpy()
        canvas = np.full((cols * step - 1, cols * step - 1), 0.3)  # light grey separators
        for i, img in enumerate(imgs):
            r, c = divmod(i, cols)
            canvas[r * step : r * step + side, c * step : c * step + side] = img
        return canvas

    for variant in VARIANTS:
        panels = [("data (test)", data.get(variant, "test")[: cfg.n_grid])]
        panels += [(LABELS[m], results[variant]["methods"][m]["grid"]) for m in METHODS]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.3))
        for ax, (title, imgs) in zip(axes, panels, strict=True):
            ax.imshow(mosaic(imgs.float().clamp(0, 1)), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        what = "Bernoulli samples" if variant == "binary" else "decoder means"
        fig.suptitle(f"{variant} digits: {what} after {cfg.steps} steps (first seed)")
        fig.tight_layout()
        name = f"samples_{variant}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(11, 4.2), squeeze=False)
    for ax, variant in zip(axes[0], VARIANTS, strict=True):
        for method in METHODS:
            runs = results[variant]["methods"][method]["replicates"]
            epochs = [p["epoch"] for p in runs[0]["curve"]]
            fids = np.array([[p["fid"] for p in r["curve"]] for r in runs])
            mean = fids.mean(0)
            ax.plot(epochs, mean, marker="o", ms=3, label=LABELS[method],
                    ls="-" if method == "amortised" else "--")  # fmt: skip
            if fids.shape[0] > 1:
                ax.fill_between(epochs, fids.min(0), fids.max(0), alpha=0.15)
        ax.axhline(results[variant]["data"]["fid"], color="gray", lw=0.8, ls=":",
                   label="data floor (train vs test)")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("LeNet-style FID to the test split")
        ax.set_title(f"{variant} digits (mean, band = min..max over seeds)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_epoch.png", dpi=110)
    plt.close(fig)
    files.append("fid_vs_epoch.png")
    return files


def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None, features: str = "none",
) -> dict[str, float]:  # fmt: skip
    """Runs the experiment, writes the files into ``out``, returns the flat metrics."""
    cfg = dataclasses.replace(config or (QUICK if quick else FULL), features=features)
    _features.check_features(cfg.features)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    from tqdm.auto import tqdm

    data = digits.load_digits_split(cfg.n_test, cfg.split_seed)
    both_x = torch.cat([data.continuous_train, data.binary_train])
    both_y = torch.cat([data.labels_train, data.labels_train])
    (net, clf_s) = _common.timed(
        lambda: digits.train_classifier(
            both_x, both_y, epochs=cfg.classifier_epochs, seed=_common.sub_seed(seed, "clf")
        ),
        torch.device("cpu"),
    )
    net.calibrate(both_x)
    results: dict[str, Any] = {
        "classifier": {
            "accuracy_continuous": digits.accuracy(net, data.continuous_test, data.labels_test),
            "accuracy_binary": digits.accuracy(net, data.binary_test, data.labels_test),
            "train_s": clf_s, "feature_scale": float(net.feature_scale),
        },
        "n_train": int(data.labels_train.shape[0]), "n_test": int(data.labels_test.shape[0]),
    }  # fmt: skip
    seeds = [_common.sub_seed(seed, "replicate", r) for r in range(cfg.seeds)]
    with tqdm(total=len(VARIANTS) * len(seeds) * len(METHODS), desc=NAME, unit="run",
              disable=not progress) as bar:  # fmt: skip
        for variant in VARIANTS:
            scorer = Scorer(net, data.get(variant, "test"))
            fid, kid = scorer(data.get(variant, "train"))
            res: dict[str, Any] = {"data": {"fid": fid, "kid": kid}, "methods": {}}
            for method in METHODS:
                res["methods"][method] = {"replicates": []}
            for s in seeds:
                torch.manual_seed(_common.sub_seed(s, variant, "generator-init"))
                gen0 = MLPGenerator(
                    digits.N_PIXELS, cfg.latent_dim, hidden=cfg.hidden,
                    likelihood=LIKELIHOOD[variant], init_std=cfg.init_std,
                ).to(device)  # fmt: skip
                for method in METHODS:
                    rec = train_method(method, gen0, data, variant, cfg, s, scorer, device)
                    grid = rec.pop("_grid")
                    if "grid" not in res["methods"][method]:
                        res["methods"][method]["grid"] = grid
                    rec["seed"] = s
                    res["methods"][method]["replicates"].append(rec)
                    bar.update(1)
            results[variant] = res
    metrics = flat_metrics(results)
    plots = plot(results, data, cfg, out)
    for variant in VARIANTS:
        for method in METHODS:
            results[variant]["methods"][method].pop("grid", None)
    details = {"results": results, "plots": plots}
    _common.write_metrics(out, metrics, details, env)
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. Amortised "
        f"learning: {_features.describe(cfg.features, cfg.feature_width, digits.N_PIXELS)}. "
        "Classifier (feature network) test "
        f"accuracy: {metrics['classifier_accuracy']:.3f} (continuous), "
        f"{metrics['classifier_accuracy_binary']:.3f} (binary). Same steps, batches and "
        "initialisation for every method; 'train s' is the wall-clock of the training steps "
        "only. The post-hoc proposal q is a fresh Gaussian encoder fitted to the frozen "
        f"generator by the IWAE-{cfg.k} bound ({cfg.proposal_steps} steps), the same for every "
        "method; 'own q' is a baseline's jointly trained encoder. See the module docstring of "
        "fastamort.experiments.images for the protocol."
    )  # fmt: skip
    _common.write_results_md(out, NAME, [*results_markdown(metrics, cfg), ("Notes", notes)])
    return metrics
