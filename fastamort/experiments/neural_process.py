"""neural-process: a latent neural process on sine functions, amortised learning vs the NP ELBO.

Data (paper §5.9, the authors' ``run_np.py``): functions y = a·sin(x − b) with
a ~ U(−0.5, 1), b ~ U(−0.5, 0.5), observed with N(0, 0.1²) noise on a grid of 100 points on
[−π, π]; a fixed training set of ``n_train_functions`` noisy functions. A task picks one
function and ``n_context`` random grid points as the context C and ``n_extra`` further points;
the targets are context ∪ extra (context ⊂ targets, as in the authors' code).

Model (:class:`~fastamort.models.NeuralProcess`, r = z = h = 50, σ floors 0.1): context
encoder r = mean_i h(x_i, y_i), global latent z ~ p_θ(z | C) = N(μ(r), σ(r)²), decoder
p_θ(y | x, z) Gaussian. Two trainings from the same initial networks, with the same tasks
(same functions and points per step, ``batch_tasks`` tasks per step), ``steps`` Adam steps
(lr ``lr``):

* ``amortised``: for each task, the context-conditioned model p_θ(z | C) p_θ(y_T | x_T, z)
  (:meth:`NeuralProcess.condition`, a model in the learner's protocol with observation y_T)
  goes through :func:`fastamort.amortised_estimate` with ``n_sleep`` sleep samples of
  (z, y_T), the exponential-family estimator, a Gaussian kernel on the raw target values with
  the median-heuristic lengthscale (per task) and a fixed ridge λ = ``lam``; the per-task
  objectives are averaged and one Adam step taken. The learner class is not used because each
  task is a different model (its own context): this is the lower-level API in our own loop.
  Encoder and decoder are both trained by this objective (the context-conditioned prior acts
  as the prior), as in the authors' code; there is no approximate posterior.
* ``elbo``: the standard NP ELBO, E_q log p(y_T | x_T, z) − KL(q(z | C ∪ T) ‖ p(z | C)), one
  reparameterised sample, q from the same encoder on context ∪ targets.
* ``elbo_long``: the same ELBO training with ``elbo_long_factor`` times the steps (an ELBO
  step is far cheaper than an amortised one: this is the comparison at a similar or smaller
  wall-clock; the times are reported).

Metric: predictive log-likelihood of held-out targets of held-out functions,
log p_θ(y_T* | x_T*, C) with ``n_eval_targets`` target points that are NOT in the context,
estimated by Monte Carlo over z ~ p_θ(z | C) with ``n_mc`` samples (log-mean-exp), reported
per target point and averaged over ``n_eval_functions`` functions (also with 1 and 10 context
points for the same functions). The Monte Carlo error is checked by repeating the main
estimate with a tenth of the samples (``*_pred_ll_mc_tenth``). References: the same
networks untrained; a context-free Gaussian fitted to all training y values; and the Bayes
predictive of the true generative process (quadrature over (a, b) on a 200 × 100 grid, the
best achievable). The paper reports no number for this experiment (PAPER.md §5.9), so these
metrics are ours. Plot: ``predictions.png``, predictive mean ± 2 std of each trained model on
four held-out functions.

Quick configuration: 150 steps of 8 tasks, 200 sleep samples, 1000 training functions,
60 evaluation functions, 500 MC samples, 4 context points only, ``elbo_long`` ×4. Full (the
``Config`` defaults): 1000 steps of 16 tasks, 400 sleep samples, λ = 1e-2, Adam lr 1e-3,
10,000 training functions, 200 evaluation functions with 20 targets each, 1000 MC samples,
contexts 1, 4, 10; ``elbo_long`` 10,000 steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import fastamort
from fastamort.models.neural_process import NeuralProcess

from . import _common

NAME = "neural-process"
METHODS = ("amortised", "elbo", "elbo_long")


@dataclass(frozen=True)
class Config:
    """Sizes and budgets of one run."""

    n_grid: int = 100
    noise_std: float = 0.1
    n_train_functions: int = 10_000
    n_context: int = 4
    n_extra: int = 4
    hidden: int = 50  # r_dim = z_dim = h_dim
    min_std: float = 0.1
    steps: int = 1000
    batch_tasks: int = 16
    lr: float = 1e-3
    n_sleep: int = 400
    lam: float = 1e-2
    n_eval_functions: int = 200
    n_eval_targets: int = 20
    eval_contexts: tuple[int, ...] = (1, 4, 10)
    n_mc: int = 1000
    elbo_long_factor: int = 10  # elbo_long: the ELBO with this many times the steps
    oracle_grid: tuple[int, int] = (200, 100)


FULL = Config()
QUICK = Config(
    n_train_functions=1000, steps=150, batch_tasks=8, n_sleep=200, n_eval_functions=60,
    n_mc=500, eval_contexts=(4,), elbo_long_factor=4,
)  # fmt: skip


# ------------------------------------------------------------------------------------------
def grid(cfg: Config) -> torch.Tensor:
    return torch.linspace(-math.pi, math.pi, cfg.n_grid)


def make_functions(
    n: int, cfg: Config, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b) (n,) each and noisy values on the grid (n, n_grid)."""
    a = -0.5 + 1.5 * torch.rand(n, generator=gen)
    b = -0.5 + torch.rand(n, generator=gen)
    y = a[:, None] * torch.sin(grid(cfg)[None] - b[:, None])
    return a, b, y + cfg.noise_std * torch.randn(y.shape, generator=gen)


def choose_points(n: int, k: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """n rows of k distinct grid indices, (n, k)."""
    return torch.rand(n, cfg.n_grid, generator=gen).argsort(1)[:, :k]


def tasks(y: torch.Tensor, idx: torch.Tensor, cfg: Config, n_ctx: int):
    """Context and target tensors (B, ·, 1) for functions y (B, G) at indices idx (B, k); the
    first ``n_ctx`` indices are the context, the targets are all k."""
    xg = grid(cfg)
    x_all, y_all = xg[idx][..., None], torch.gather(y, 1, idx)[..., None]
    return x_all[:, :n_ctx], y_all[:, :n_ctx], x_all, y_all


# ------------------------------------------------------------------------------------------
def train(method: str, net: NeuralProcess, data: torch.Tensor, cfg: Config, seed: int,
          bar) -> dict[str, Any]:  # fmt: skip
    """Trains ``net`` in place; the task stream depends only on ``seed`` (same for both)."""
    gen = torch.Generator().manual_seed(_common.sub_seed(seed, "tasks"))
    torch.manual_seed(_common.sub_seed(seed, method, "train"))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    k = cfg.n_context + cfg.n_extra
    steps = cfg.steps * (cfg.elbo_long_factor if method == "elbo_long" else 1)
    trace, start = [], time.perf_counter()
    for _ in range(steps):
        fn = torch.randint(0, data.shape[0], (cfg.batch_tasks,), generator=gen)
        idx = choose_points(cfg.batch_tasks, k, cfg, gen)
        xc, yc, xt, yt = tasks(data[fn], idx, cfg, cfg.n_context)
        if method != "amortised":
            objective = net.elbo(xc, yc, xt, yt).mean()
        else:
            objective = 0.0
            for i in range(cfg.batch_tasks):
                model = net.condition(xc[i], yc[i], xt[i])
                est = fastamort.amortised_estimate(
                    model, yt[i].reshape(1, -1), n_sleep=cfg.n_sleep, lam=cfg.lam,
                    estimator="expfam",
                )  # fmt: skip
                objective = objective + est.objective / cfg.batch_tasks
        opt.zero_grad(set_to_none=True)
        (-objective).backward()
        opt.step()
        trace.append(float(objective.detach()))
        bar.update(1)
    window = max(1, steps // 10)
    return {
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "objective_first": sum(trace[:window]) / window,
        "objective_last": sum(trace[-window:]) / window,
        "objective_trace": trace[:: max(1, steps // 200)],
    }


def eval_set(cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """Held-out functions, their noise-free parameters and context/target indices."""
    gen = torch.Generator().manual_seed(_common.sub_seed(seed, "eval"))
    a, b, y = make_functions(cfg.n_eval_functions, cfg, gen)
    n_ctx = max(cfg.eval_contexts)
    idx = choose_points(cfg.n_eval_functions, n_ctx + cfg.n_eval_targets, cfg, gen)
    return {"a": a, "b": b, "y": y, "idx": idx}


def split(ev: dict[str, torch.Tensor], cfg: Config, n_ctx: int):
    """Context = the first n_ctx indices; held-out targets = the last n_eval_targets ones
    (disjoint from every context size)."""
    idx = ev["idx"]
    xg = grid(cfg)
    ci, ti = idx[:, :n_ctx], idx[:, -cfg.n_eval_targets :]
    g = lambda i: (xg[i][..., None], torch.gather(ev["y"], 1, i)[..., None])  # noqa: E731
    return (*g(ci), *g(ti))


@torch.no_grad()
def oracle_log_likelihood(xc, yc, xt, yt, cfg: Config) -> torch.Tensor:
    """log p(y_T | x_T, C) under the true process, by quadrature over (a, b): (B,)."""
    na, nb = cfg.oracle_grid
    a = torch.linspace(-0.5, 1.0, na + 1, dtype=torch.float64)
    a = 0.5 * (a[1:] + a[:-1])
    b = torch.linspace(-0.5, 0.5, nb + 1, dtype=torch.float64)
    b = 0.5 * (b[1:] + b[:-1])
    aa, bb = (t.reshape(-1) for t in torch.meshgrid(a, b, indexing="ij"))

    def loglik(x, y):  # (B, N, 1) → (B, A·B)
        mu = aa[None, None] * torch.sin(x.double() - bb[None, None])
        d = torch.distributions.Normal(mu, cfg.noise_std)
        return d.log_prob(y.double()).sum(1)

    lc = loglik(xc, yc) if xc.shape[1] else torch.zeros(xt.shape[0], aa.numel())
    lt = loglik(xt, yt)
    return torch.logsumexp(lc + lt, 1) - torch.logsumexp(lc, 1)


def evaluate(nets: dict[str, NeuralProcess], data: torch.Tensor, ev, cfg: Config,
             seed: int) -> dict[str, Any]:  # fmt: skip
    """Per-target predictive log-likelihoods (mean, standard error) per method and context."""
    res: dict[str, Any] = {}
    marginal = torch.distributions.Normal(0.0, float(data.std()))
    for n_ctx in cfg.eval_contexts:
        xc, yc, xt, yt = split(ev, cfg, n_ctx)
        per = {}
        for name, net in nets.items():
            torch.manual_seed(_common.sub_seed(seed, "mc", name, n_ctx))
            per[name] = net.predictive_log_likelihood(xc, yc, xt, yt, n_samples=cfg.n_mc)
        if n_ctx == cfg.n_context:
            for name, net in nets.items():
                torch.manual_seed(_common.sub_seed(seed, "mc-tenth", name))
                ll = net.predictive_log_likelihood(xc, yc, xt, yt, n_samples=cfg.n_mc // 10)
                per[f"{name}_mc_tenth"] = ll
        per["oracle"] = oracle_log_likelihood(xc, yc, xt, yt, cfg)
        per["marginal"] = marginal.log_prob(yt - float(data.mean())).sum((1, 2)).double()
        res[str(n_ctx)] = {
            k: {
                "mean": float(v.mean()) / cfg.n_eval_targets,
                "sem": float(v.std() / math.sqrt(v.numel())) / cfg.n_eval_targets,
            }
            for k, v in per.items()
        }
    return res


def plot(nets: dict[str, NeuralProcess], ev, cfg: Config, out: Path) -> list[str]:
    plt = _common.pyplot()
    if plt is None:
        return []
    n_ctx = cfg.n_context
    xc, yc, _, _ = split(ev, cfg, n_ctx)
    xg = grid(cfg)
    xn = xg.numpy()
    fig, axes = plt.subplots(len(nets), 4, figsize=(13, 2.7 * len(nets)), sharex=True,
                             sharey=True, squeeze=False)  # fmt: skip
    for row, (name, net) in enumerate(nets.items()):
        torch.manual_seed(row)
        mean, std = net.predict(xc[:4], yc[:4], xg[None, :, None].expand(4, -1, 1))
        for j in range(4):
            ax = axes[row, j]
            truth = (ev["a"][j] * torch.sin(xg - ev["b"][j])).numpy()
            ax.plot(xn, truth, "k--", lw=1, label="true function")
            m, s = mean[j, :, 0].numpy(), std[j, :, 0].numpy()
            ax.plot(xn, m, f"C{row}", label="predictive mean")
            ax.fill_between(xn, m - 2 * s, m + 2 * s, alpha=0.25, color=f"C{row}")
            ax.plot(xc[j, :, 0].numpy(), yc[j, :, 0].numpy(), "ko", ms=4, label="context")
            if j == 0:
                ax.set_ylabel(name)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"neural process: predictive mean ± 2 std, {n_ctx} context points")
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=110)
    plt.close(fig)
    return ["predictions.png"]


# ------------------------------------------------------------------------------------------
def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None,
) -> dict[str, float]:  # fmt: skip
    """Runs the experiment, writes the files into ``out``, returns the flat metrics."""
    if device.type != "cpu":
        raise ValueError(f"device: this experiment runs on the CPU only, got {device}")
    cfg = config or (QUICK if quick else FULL)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    gen = torch.Generator().manual_seed(_common.sub_seed(seed, "train-data"))
    _, _, data = make_functions(cfg.n_train_functions, cfg, gen)
    ev = eval_set(cfg, seed)
    torch.manual_seed(_common.sub_seed(seed, "init"))
    init = NeuralProcess(r_dim=cfg.hidden, z_dim=cfg.hidden, h_dim=cfg.hidden,
                         min_std=cfg.min_std)  # fmt: skip
    nets = {m: NeuralProcess(r_dim=cfg.hidden, z_dim=cfg.hidden, h_dim=cfg.hidden,
                             min_std=cfg.min_std) for m in METHODS}  # fmt: skip
    for net in nets.values():
        net.load_state_dict(init.state_dict())
    from tqdm.auto import tqdm

    training = {}
    total = cfg.steps * (len(METHODS) - 1 + cfg.elbo_long_factor)
    with tqdm(total=total, desc=NAME, unit="step", disable=not progress) as bar:
        for method, net in nets.items():
            training[method] = train(method, net, data, cfg, seed, bar)
    scores = evaluate({**nets, "untrained": init}, data, ev, cfg, seed)
    plots = plot(nets, ev, cfg, out)

    metrics: dict[str, float] = {}
    for n_ctx, per in scores.items():
        for name, s in per.items():
            metrics[f"{name}_pred_ll_ctx{n_ctx}"] = s["mean"]
    main = str(cfg.n_context)
    for name in (*METHODS, "untrained", "oracle", "marginal"):
        metrics[f"{name}_pred_ll"] = scores[main][name]["mean"]
    for name in METHODS:
        metrics[f"{name}_pred_ll_mc_tenth"] = scores[main][f"{name}_mc_tenth"]["mean"]
    for method in METHODS:
        metrics[f"{method}_train_s"] = training[method]["seconds"]
    details = {"scores": scores, "training": training, "plots": plots}
    _common.write_metrics(out, metrics, details, env)

    labels = {"amortised": "amortised learning", "elbo": "NP ELBO",
              "elbo_long": f"NP ELBO, {cfg.elbo_long_factor}× steps", "untrained": "untrained NP",
              "oracle": "true process (Bayes)", "marginal": "context-free Gaussian"}  # fmt: skip
    header = ["method", *[f"{c} context" for c in scores], "steps", "train s"]
    rows = []
    for name, label in labels.items():
        cells = [f"{scores[c][name]['mean']:.3f} ± {scores[c][name]['sem']:.3f}" for c in scores]
        secs = f"{training[name]['seconds']:.0f}" if name in training else "-"
        steps = str(training[name]["steps"]) if name in training else "-"
        rows.append([label, *cells, steps, secs])
    mc = ", ".join(f"{m} {scores[main][m + '_mc_tenth']['mean']:.3f}" for m in METHODS)
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. Predictive log-likelihood per held-out target point (nats; "
        "mean ± standard error "
        f"over {cfg.n_eval_functions} held-out functions, {cfg.n_eval_targets} targets each, "
        f"not in the context; Monte Carlo over z with {cfg.n_mc} prior samples). Training: "
        f"{cfg.steps} Adam steps of {cfg.batch_tasks} tasks ({cfg.n_context} context + "
        f"{cfg.n_extra} extra points), amortised with M = {cfg.n_sleep} sleep samples per task "
        f"and λ = {cfg.lam}. Monte Carlo check, {main} context points, with {cfg.n_mc // 10} "
        f"samples instead of {cfg.n_mc}: {mc}. "
        "See the module docstring of fastamort.experiments.neural_process."
    )
    _common.write_results_md(
        out, NAME, [("Predictive log-likelihood", _common.markdown_table(header, rows)),
                    ("Notes", notes)],
    )  # fmt: skip
    return metrics
