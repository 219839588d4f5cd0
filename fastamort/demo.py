"""The main job: ``fastamort demo`` trains factor analysis by amortised learning, offline.

The data set is synthetic and built in: n points from a factor-analysis model
x = W z + b + ε (z ~ N(0, I_k), ε ~ N(0, diag(σ²))) with random "true" parameters, split into
a training and a held-out half. Factor analysis is the ideal check of the method because its
log-likelihood log p(x) = log N(x; b, W Wᵀ + diag(σ²)) is exact and cheap, so the demo reports
what amortised learning reached against what maximum likelihood reaches on the same data:

* the model is trained by :class:`fastamort.AmortisedLearner` (wake-sleep with kernel ridge
  regression; the exact likelihood is never used for training), with a progress bar;
* the MLE is found by L-BFGS on the exact mean log-likelihood (float64, started from the true
  parameters and from the learned ones; the better optimum is kept);
* printed and written to ``metrics.json``: the exact mean log-likelihood (nats per point) on
  the training and held-out data of the initial model, the learned model, the MLE and the true
  parameters, the gap to the MLE, the fraction of the initial gap closed, and the relative
  error of the learned covariance W Wᵀ + diag(σ²) against the MLE's (rotation invariant);
* ``demo.png`` (when matplotlib is installed; otherwise a message says so and the figure is
  skipped): the learning curve of the exact log-likelihood against the step, the gap to the
  MLE on a log scale, and the learned covariance entries against the MLE's and the truth's.

Budgets: the default run takes 200 learner steps with M = 1000 sleep samples (Adam, learning
rate 0.05 decayed linearly to 0.005 over the second half): about 8 s of training on 2 idle CPU
cores; on 2 cores shared with other heavy jobs the whole run has taken up to 3 minutes.
``--quick`` (12 steps, M = 200) takes a few seconds and is for smoke tests, not for results.

Example:
    >>> import tempfile
    >>> from fastamort.demo import run_demo
    >>> m = run_demo(tempfile.mkdtemp(), quick=True, progress=False, verbose=False)
    >>> sorted(m["log_likelihood"])
    ['initial', 'learned', 'mle', 'true']
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import fastamort
from fastamort._atomic import StagedFiles, probe_writable
from fastamort._checks import check_int
from fastamort.distributed import current_rank
from fastamort.models import FactorAnalysis

DEFAULT_OUT = "fastamort-demo"
MAX_SEED = 2**32  # seeds lie in [0, MAX_SEED): the learner's data order takes a 32-bit seed


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of one demo run."""

    obs_dim: int = 10  # D
    latent_dim: int = 3  # k
    n_train: int = 1000
    n_test: int = 1000
    n_sleep: int = 1000  # M, sleep samples per regression
    n_held_out: int = 200  # M', held-out sleep samples for the kernel step
    batch_size: int = 100  # wake batch N
    epochs: int = 20  # steps = epochs * n_train / batch_size
    lr: float = 0.05  # Adam, decayed linearly to lr * final_lr_factor over the last half
    final_lr_factor: float = 0.1
    kernel_lr: float = 0.02
    eval_every: int = 5


QUICK = DemoConfig(
    obs_dim=5, latent_dim=2, n_train=200, n_test=200, n_sleep=200, n_held_out=50,
    batch_size=50, epochs=3, eval_every=2,
)  # fmt: skip
FULL = DemoConfig()


def make_data(
    cfg: DemoConfig, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[FactorAnalysis, torch.Tensor, torch.Tensor]:
    """The true model and the training and held-out data (CPU; deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    d, k = cfg.obs_dim, cfg.latent_dim
    truth = FactorAnalysis(d, k).to(dtype)
    with torch.no_grad():
        truth.weight.copy_(torch.randn(d, k, generator=gen, dtype=dtype))
        truth.bias.copy_(torch.randn(d, generator=gen, dtype=dtype))
        std = 0.3 + 0.5 * torch.rand(d, generator=gen, dtype=dtype)
        truth.likelihood.log_std.copy_(std.log())
        n = cfg.n_train + cfg.n_test
        z = torch.randn(n, k, generator=gen, dtype=dtype)
        x = truth.mean(z) + std * torch.randn(n, d, generator=gen, dtype=dtype)
    return truth, x[: cfg.n_train].contiguous(), x[cfg.n_train :].contiguous()


def covariance(model: FactorAnalysis) -> torch.Tensor:
    """The model's covariance of x, W Wᵀ + diag(σ²) (invariant to rotations of W)."""
    with torch.no_grad():
        w = model.weight
        return w @ w.T + torch.diag(model.likelihood.variance())


@torch.no_grad()
def exact_ll(model: FactorAnalysis, x: torch.Tensor) -> float:
    """Exact mean log p(x) in nats per point."""
    return float(model.exact_log_likelihood(x))


def fit_mle(x: torch.Tensor, starts: Sequence[FactorAnalysis], max_iter: int = 500):
    """Maximum likelihood by L-BFGS on the exact mean log-likelihood (float64, CPU).

    Runs from each model in ``starts`` (copies; the originals are untouched) and returns the
    best optimum found.
    """
    x = x.detach().to("cpu", torch.float64)
    best, best_ll = None, -math.inf
    for start in starts:
        model = copy.deepcopy(start).to("cpu", torch.float64)
        opt = torch.optim.LBFGS(
            model.parameters(),
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure(model=model, opt=opt):
            opt.zero_grad()
            loss = -model.exact_log_likelihood(x)
            loss.backward()
            return loss

        opt.step(closure)
        ll = exact_ll(model, x)
        if ll > best_ll:
            best, best_ll = model, ll
    return best


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda: torch has no CUDA device here (torch.cuda.is_available() is False)"
        )
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per rank
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device(device)


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    device: str = "auto",
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    figure: bool = True,
    verbose: bool = True,
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Runs the demo; writes ``metrics.json`` (and ``demo.png``) under ``out``; returns metrics.

    Args:
        out: output folder (created).
        device: "auto" (CUDA if available), "cpu" or "cuda".
        quick: the tiny budget (a few seconds) instead of the default (about a minute).
        seed: seeds the data, the initial model and the sleep samples; in [0, 2**32).
        progress: show a tqdm progress bar.
        figure: write ``demo.png`` (skipped with a message if matplotlib is missing).
        verbose: print the metrics table.
        config: overrides the budget chosen by ``quick``.

    ``metrics.json`` and ``demo.png`` are replaced together at the end (see
    :mod:`fastamort._atomic`): an interrupted run leaves the previous run's files, complete.
    """
    t_start = time.perf_counter()
    seed = check_int(seed, "seed", 0)
    if seed >= MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
    cfg = config or (QUICK if quick else FULL)
    dev = _resolve_device(device)
    out = Path(out)
    # Under torchrun every rank trains (data-parallel, see fastamort.distributed); rank 0 alone
    # reports and writes files.
    main = current_rank() == 0
    say = print if verbose and main else (lambda *a, **k: None)
    if main:  # before training: an unusable folder fails now, not after the run
        probe_writable(out / "metrics.json")

    truth, x_train, x_test = make_data(cfg, seed)
    torch.manual_seed(seed + 1)
    model = FactorAnalysis(cfg.obs_dim, cfg.latent_dim, weight_scale=0.5).double()
    initial = copy.deepcopy(model)
    model = model.to(dev)
    xtr, xte = x_train.to(dev), x_test.to(dev)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)  # > 1 under torchrun: data-parallel
    steps = cfg.epochs * math.ceil(math.ceil(cfg.n_train / world) / cfg.batch_size)
    say(
        f"fastamort demo: factor analysis D={cfg.obs_dim}, k={cfg.latent_dim}; "
        f"{cfg.n_train} training and {cfg.n_test} held-out points (synthetic, seed {seed}); "
        f"{steps} amortised-learning steps, M={cfg.n_sleep} sleep samples, on {dev}"
        + (f" ({world} ranks, per-rank data shards and sleep samples)" if world > 1 else "")
    )

    curve: list[dict[str, float]] = [
        {"step": 0, "train": exact_ll(model, xtr), "held_out": exact_ll(model, xte)}
    ]

    def schedule(learner, record):
        # constant, then linear decay over the second half: less step noise at the end
        frac = max(0.0, 2.0 * record["step"] / steps - 1.0)
        for group in learner.optimizer.param_groups:
            group["lr"] = cfg.lr * (1.0 - frac * (1.0 - cfg.final_lr_factor))

    def evaluate(learner, record):
        if record["step"] % cfg.eval_every == 0 or record["step"] == steps:
            curve.append(
                {
                    "step": record["step"],
                    "train": exact_ll(learner.model, xtr),
                    "held_out": exact_ll(learner.model, xte),
                }
            )

    learner = fastamort.AmortisedLearner(
        model,
        n_sleep=cfg.n_sleep,
        n_held_out=cfg.n_held_out,
        lr=cfg.lr,
        kernel_lr=cfg.kernel_lr,
        seed=seed,
    )
    t_train = time.perf_counter()
    with fastamort.record_backends() as ran:
        history = learner.fit(
            xtr, epochs=cfg.epochs, batch_size=cfg.batch_size, progress=progress,
            callbacks=[schedule, evaluate],
        )  # fmt: skip
    train_seconds = time.perf_counter() - t_train
    backends = sorted({b for _, b in ran})
    if not main:
        return {"steps": len(history), "train_seconds": train_seconds, "rank": current_rank()}

    learned_cpu = copy.deepcopy(model).to("cpu")
    mle = fit_mle(x_train, [truth, learned_cpu])
    ll = {
        name: {"train": exact_ll(m, x_train), "held_out": exact_ll(m, x_test)}
        for name, m in (
            ("initial", initial),
            ("learned", learned_cpu),
            ("mle", mle),
            ("true", truth),
        )
    }
    gap = ll["mle"]["train"] - ll["learned"]["train"]
    closed = (ll["learned"]["train"] - ll["initial"]["train"]) / (
        ll["mle"]["train"] - ll["initial"]["train"]
    )
    c_mle = covariance(mle)
    cov_err = float(torch.linalg.norm(covariance(learned_cpu) - c_mle) / torch.linalg.norm(c_mle))

    metrics: dict[str, Any] = {
        "model": "FactorAnalysis",
        "device": str(dev),
        "seed": seed,
        "quick": bool(config is None and quick),
        "config": asdict(cfg),
        "steps": len(history),
        "backends": backends,
        "log_likelihood": ll,
        "gap_to_mle_train": gap,
        "gap_to_mle_held_out": ll["mle"]["held_out"] - ll["learned"]["held_out"],
        "fraction_of_gap_closed": closed,
        "covariance_relative_error": cov_err,
        "final_lengthscale": history[-1]["lengthscale"] if history else None,
        "final_lambda": history[-1]["lam"] if history else None,
        "train_seconds": train_seconds,
        "curve": curve,
        "versions": {"fastamort": fastamort.__version__, "torch": torch.__version__},
    }

    say("")
    say("exact mean log-likelihood (nats per point)      train   held-out")
    labels = {
        "initial": "initial model",
        "learned": f"amortised learning ({len(history)} steps)",
        "mle": "maximum likelihood (L-BFGS on exact log p)",
        "true": "true generating parameters",
    }
    for key, label in labels.items():
        say(f"  {label:44s} {ll[key]['train']:8.4f} {ll[key]['held_out']:9.4f}")
    say(
        f"gap to the MLE: {gap:.4f} nats per point on the training data "
        f"({metrics['gap_to_mle_held_out']:+.4f} held-out); {100 * closed:.1f}% of the "
        "initial gap closed"
    )
    say(f"covariance W Wᵀ + diag(σ²) vs the MLE's: relative error {cov_err:.3f}")
    say(
        f"training {train_seconds:.1f} s ({len(history)} steps, backends: "
        f"{', '.join(backends) or 'none'})"
    )

    written = [out / "metrics.json"]
    with StagedFiles() as stage:  # both files replaced at the end, metrics.json last
        if figure:
            png = _plot(stage.path(out / "demo.png"), curve, ll, learned_cpu, mle, truth, say)
            if png is None:  # no matplotlib: the previous figure, if any, stays
                stage.unstage(out / "demo.png")
            else:
                written.append(out / "demo.png")
        metrics["total_seconds"] = time.perf_counter() - t_start
        metrics["figure"] = str(written[1]) if len(written) > 1 else None
        stage.write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    say(f"total {metrics['total_seconds']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return metrics


def _plot(path: Path, curve, ll, learned, mle, truth, say) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(
            "matplotlib is not installed: skipped the figure "
            "(pip install matplotlib, or pip install 'fastamort[demo]')"
        )
        return None
    fig, (ax_ll, ax_gap, ax_cov) = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = [c["step"] for c in curve]
    for key, label in (("train", "training data"), ("held_out", "held-out data")):
        (line,) = ax_ll.plot(steps, [c[key] for c in curve], label=f"learned, {label}")
        ax_ll.axhline(ll["mle"][key], color=line.get_color(), ls="--", lw=1, label=f"MLE, {label}")
        gaps = [ll["mle"][key] - c[key] for c in curve]
        ax_gap.plot(steps, gaps, color=line.get_color(), label=label)
    ax_ll.set_xlabel("learner step")
    ax_ll.set_ylabel("exact mean log p(x)  [nats per point]")
    ax_ll.set_title("amortised learning of factor analysis")
    ax_ll.legend(loc="lower right", fontsize=8)
    ax_gap.set_yscale("symlog", linthresh=0.01)
    ax_gap.axhline(0.0, color="k", lw=0.8)
    ax_gap.set_xlabel("learner step")
    ax_gap.set_ylabel("MLE − learned  [nats per point]")
    ax_gap.set_title("gap to the maximum-likelihood fit")
    ax_gap.legend(loc="upper right", fontsize=8)

    c_mle, c_learned, c_true = covariance(mle), covariance(learned), covariance(truth)
    iu = torch.triu_indices(c_mle.shape[0], c_mle.shape[0])
    a, b, t = (c[iu[0], iu[1]].numpy() for c in (c_mle, c_learned, c_true))
    ax_cov.scatter(a, t, s=14, c="lightgray", label="true parameters")
    ax_cov.scatter(a, b, s=14, label="amortised learning")
    span = [min(a.min(), b.min()), max(a.max(), b.max())]
    ax_cov.plot(span, span, "k--", lw=1)
    ax_cov.set_xlabel("MLE covariance entry")
    ax_cov.set_ylabel("covariance entry")
    ax_cov.set_title("fitted structure: W Wᵀ + diag(σ²)")
    ax_cov.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastamort demo",
        description="Train factor analysis by amortised learning on a built-in synthetic data "
        "set and compare with the exact maximum-likelihood fit.",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"),
        help="auto: CUDA if available, else CPU (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny budget (a few seconds)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed in [0, 2**32) (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-figure", action="store_true", help="do not write demo.png")
    args = parser.parse_args(argv)
    if not 0 <= args.seed < MAX_SEED:
        parser.error(f"--seed: expected an integer in [0, 2**32), got {args.seed}")
    try:
        run_demo(
            args.out, device=args.device, quick=args.quick, seed=args.seed,
            progress=not args.no_progress, figure=not args.no_figure,
        )  # fmt: skip
    except RuntimeError as err:
        if str(err).startswith("--device"):
            parser.error(str(err))
        raise
    except OSError as err:
        parser.error(f"--out: cannot write to {args.out!r}: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
