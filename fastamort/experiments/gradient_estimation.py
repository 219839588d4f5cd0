"""gradient-estimation: how close is each method's θ-gradient to the exact ML gradient?

Two models whose log-likelihood is exact, so ∇θ (1/N) Σ_n log p_θ(x_n) is known:

* ``fa``: factor analysis (D = 5, k = 2; :class:`~fastamort.models.FactorAnalysis`), exact
  through the Gaussian marginal N(b, W Wᵀ + diag σ²) and autograd;
* ``gmm``: a Gaussian mixture (D = 2, K = 3; :class:`~fastamort.models.GaussianMixture`),
  exact by enumerating the components.

For each model, data x_1..x_N (N = 100) are drawn from a random "true" model and the
gradient is taken at a *different* random model θ (so it is far from zero). Methods:

* ``amortised_expfam``, ``amortised_generic``: :func:`fastamort.amortised_objective` with M
  sleep samples (the budget axis) and the package defaults: a Gaussian kernel whose
  lengthscale and λ the default rule (``lam="importance"``, :mod:`fastamort.importance_rule`)
  chooses on each estimate's own sleep set, inside the timed estimate. ``amortised`` in the
  headline metrics is the exponential-family estimator, what ``estimator="auto"`` picks for
  these models. ``Config.lam_rule`` = "evidence" or "loo" runs an earlier rule instead (the
  GP evidence, or λ by leave-one-out at the median heuristic), fixed per M from one separate
  sleep set (set-up, not timed), and ``Config.intercept`` = True the regression with an
  unpenalised constant, for comparison.
* ``vae``: ∇θ ELBO with S reparameterised samples per datum (for the mixture's categorical
  encoder the ELBO is summed exactly over the K components, so S plays no role there).
* ``iwae5``, ``iwae50``: ∇θ of the IWAE-k bound (k = 5, 50), averaged over S/k independent
  k-particle estimates per datum (S a multiple of k).
* ``rws``: the RWS wake-θ gradient with k = S particles per datum, self-normalised per datum.

Protocol for the baselines: each method gets its own encoder (MLP, two tanh layers of 64),
trained with the model θ held fixed on the same N data by the method's own φ-objective
(VAE: ELBO, 1 sample; IWAE-k: the IWAE-k bound, reparameterised / VIMCO; RWS: wake-φ with
k = 5), Adam for ``encoder_steps`` full-batch steps (lr ``encoder_lr``, the last quarter at a
tenth of it). That training time is reported apart (``*_encoder_train_s``): in a learning
run the encoder is trained alongside θ, so its cost is amortised over the steps, like the
amortised learner's λ choice. Then the θ-gradient is measured ``repeats`` times per budget
with fresh randomness, and each measurement is timed (sampling, log-joint, solve, backward).

Reported per (model, method, budget): mean and standard deviation over the repeats of the
cosine similarity, of the relative error ‖g − g*‖/‖g*‖ to the exact gradient g* and of the
length ratio ‖g‖/‖g*‖, and the mean seconds per estimate. "Matched wall-clock": for each
method the largest budget whose time per estimate is at most that of ``amortised_expfam`` at
its largest M.

Budget axes differ in meaning: M sleep samples are shared by all N data; S is per datum
(N·S log-joint evaluations). Time per estimate is the common currency.

Oracle report (not a test): for the amortised estimators at the budgets ``oracle_sizes``,
the same repeats (the same sleep sets) at every (ℓ, λ) of the grid ``oracle_factors`` × the
set-up's median heuristic by ``oracle_lambdas``; the oracle is the grid point of smallest
mean relative error, chosen with the exact gradient, so it is optimistic (it also picks the
luckiest of the grid's points); reported next to the default's error as their ratio.

Headline metrics (``metrics.json``): ``<method>_cosine`` and ``<method>_rel_error`` at the
method's largest budget, averaged over the two models (``iwae_cosine`` is k = 50, the
stronger IWAE); per-model values are prefixed ``fa_`` and ``gmm_``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fastamort
from fastamort.baselines import (
    BaselineLearner,
    encoder_for,
    iwae_bound,
    rws_losses,
    vae_loss,
)
from fastamort.kernels import Gaussian, median_distance
from fastamort.models import FactorAnalysis, GaussianMixture
from fastamort.ops.standard_normal import torch_stream

from . import _common

NAME = "gradient-estimation"
PROBLEMS = ("fa", "gmm")
AMORTISED = ("amortised_expfam", "amortised_generic")
BASELINES = ("vae", "iwae5", "iwae50", "rws")
METHODS = AMORTISED + BASELINES
LABELS = {
    "amortised_expfam": "amortised (expfam)",
    "amortised_generic": "amortised (generic)",
    "vae": "VAE",
    "iwae5": "IWAE k=5",
    "iwae50": "IWAE k=50",
    "rws": "RWS",
}


@dataclass(frozen=True)
class Config:
    """Sizes and budgets of one run."""

    n_data: int = 100  # N, the wake batch
    fa_obs_dim: int = 5
    fa_latent_dim: int = 2
    gmm_obs_dim: int = 2
    gmm_components: int = 3
    sleep_sizes: tuple[int, ...] = (100, 250, 500, 1000, 2000, 4000)  # M (amortised)
    particle_sizes: tuple[int, ...] = (50, 250, 1000, 5000)  # S per datum (baselines)
    repeats: int = 5
    encoder_steps: int = 2000
    encoder_lr: float = 1e-2
    encoder_hidden: tuple[int, ...] = (64, 64)
    rws_train_k: int = 5
    lam_rule: str = "importance"  # the amortised estimators' λ (and ℓ) rule
    intercept: bool = False  # the regression with an unpenalised constant (add_intercept)
    oracle_sizes: tuple[int, ...] = (1000, 2000, 4000)
    oracle_factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    oracle_lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)

    def __post_init__(self):
        for s in self.particle_sizes:
            if s % 50:
                raise ValueError(f"particle_sizes: {s} is not a multiple of 50 (IWAE k=50)")


FULL = Config()
QUICK = Config(
    sleep_sizes=(100, 300, 1000), particle_sizes=(50, 500), repeats=2, encoder_steps=300,
    oracle_sizes=(1000,), oracle_factors=(0.5, 2.0), oracle_lambdas=(1e-2, 1.0),
)  # fmt: skip


# ------------------------------------------------------------------------------------------
def make_problem(
    problem: str, cfg: Config, seed: int, device: torch.device
) -> tuple[nn.Module, torch.Tensor]:
    """(model at which the gradient is taken, data x (N, D)), float64, deterministic in seed."""
    torch.manual_seed(_common.sub_seed(seed, problem, "problem"))
    if problem == "fa":
        make = lambda: FactorAnalysis(cfg.fa_obs_dim, cfg.fa_latent_dim)  # noqa: E731
    elif problem == "gmm":
        make = lambda: GaussianMixture(cfg.gmm_obs_dim, cfg.gmm_components)  # noqa: E731
    else:
        raise ValueError(f"problem: expected one of {PROBLEMS}, got {problem!r}")
    truth = make().double().to(device)
    with torch.no_grad(), torch_stream():  # the data set: a function of the seed alone
        x = truth.sample(cfg.n_data)[1]
    return make().double().to(device), x


def theta_gradient(model: nn.Module, objective: torch.Tensor) -> torch.Tensor:
    """∇θ objective as one flat vector over the model's parameters (encoder excluded)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def exact_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return theta_gradient(model, model.exact_log_likelihood(x))


def train_encoder(
    method: str, model: nn.Module, x: torch.Tensor, cfg: Config, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Fits the method's encoder to the fixed model (θ frozen); returns it and a summary."""
    torch.manual_seed(seed)
    encoder = encoder_for(model, hidden=cfg.encoder_hidden)
    kw: dict[str, Any] = {"vae": {"method": "vae", "n_samples": 1},
                          "iwae5": {"method": "iwae", "k": 5},
                          "iwae50": {"method": "iwae", "k": 50},
                          "rws": {"method": "rws", "k": cfg.rws_train_k}}[method]  # fmt: skip
    learner = BaselineLearner(model, encoder, lr=cfg.encoder_lr, train_model=False, seed=seed, **kw)
    main = (3 * cfg.encoder_steps) // 4
    learner.fit(x, epochs=main, batch_size=x.shape[0], progress=False)
    for group in learner.encoder_optimizer.param_groups:
        group["lr"] = cfg.encoder_lr / 10
    learner.fit(x, epochs=cfg.encoder_steps - main, batch_size=x.shape[0], progress=False)
    hist = learner.history
    tail = hist[-max(1, len(hist) // 20) :]
    return encoder, {
        "steps": len(hist),
        "seconds": sum(h["seconds"] for h in hist),
        "final_theta_loss": statistics.fmean(h["loss"] for h in tail),
        "final_phi_loss": statistics.fmean(h["phi_loss"] for h in tail),
    }


def estimator_fn(
    method: str, model: nn.Module, x: torch.Tensor, budget: int, *, encoder=None, lam=None,
    lengthscale=None, intercept=False,
) -> Callable[[], torch.Tensor]:  # fmt: skip
    """A function returning the method's θ-objective (to ascend) at this budget."""
    if method in AMORTISED:
        est = method.split("_")[1]
        kernel = None if lengthscale is None else Gaussian(lengthscale)
        return lambda: fastamort.amortised_objective(
            model, x, n_sleep=budget, lam=lam, estimator=est, kernel=kernel, intercept=intercept
        )
    if method == "vae":
        return lambda: -vae_loss(model, encoder, x, n_samples=budget)
    if method in ("iwae5", "iwae50"):
        k = int(method[4:])
        return lambda: iwae_bound(model, encoder, x, k=k, n_estimates=budget // k).mean()
    if method == "rws":
        return lambda: -rws_losses(model, encoder, x, k=budget)[0]
    raise ValueError(f"method: {method!r}")


def oracle(
    method: str, model: nn.Module, x: torch.Tensor, budget: int, g_star: torch.Tensor,
    cfg: Config, seed: int, problem: str, median: float,
) -> dict[str, Any]:  # fmt: skip
    """The best (ℓ, λ) of the grid by mean relative error over the repeats' sleep sets (the
    same sets as the default's), chosen with the exact gradient; ``cfg.intercept`` as the
    default's."""
    kind = method.split("_")[1]
    grid = [(f, lam) for f in cfg.oracle_factors for lam in cfg.oracle_lambdas]
    errors: dict[tuple[float, float], list[float]] = {key: [] for key in grid}
    for r in range(cfg.repeats):
        torch.manual_seed(_common.sub_seed(seed, problem, method, budget, r))
        sleep = fastamort.estimator.draw_sleep(model, budget)
        for f, lam in grid:
            est = fastamort.amortised_estimate(
                model, x, sleep=sleep, kernel=Gaussian(f * median), lam=lam, estimator=kind,
                intercept=cfg.intercept,
            )  # fmt: skip
            g = theta_gradient(model, est.objective)
            errors[(f, lam)].append(float((g - g_star).norm() / g_star.norm()))
    means = {key: statistics.fmean(v) for key, v in errors.items()}
    (f, lam), best = min(means.items(), key=lambda kv: kv[1])
    table = [{"factor": k[0], "lam": k[1], "rel_error": v} for k, v in means.items()]
    return {"rel_error": best, "factor": f, "lengthscale": f * median, "lam": lam, "grid": table}


def run_problem(problem: str, cfg: Config, seed: int, device: torch.device, bar) -> dict[str, Any]:
    """All methods and budgets on one model; returns the nested record of the problem."""
    model, x = make_problem(problem, cfg, seed, device)
    g_star = exact_gradient(model, x)
    record: dict[str, Any] = {
        "n_parameters": int(g_star.numel()),
        "exact_gradient_norm": float(g_star.norm()),
        "exact_log_likelihood": float(model.exact_log_likelihood(x).detach()),
        "methods": {},
    }
    for method in METHODS:
        info: dict[str, Any] = {"label": LABELS[method], "points": []}
        encoder, lams, ells, medians = None, {}, {}, {}
        intercept = cfg.intercept
        if method in AMORTISED:
            budgets = cfg.sleep_sizes
            setup = 0.0
            for m in budgets:
                torch.manual_seed(_common.sub_seed(seed, problem, method, m, "lambda"))
                kind = method.split("_")[1]
                est, dt = _common.timed(
                    lambda m=m, kind=kind: fastamort.amortised_estimate(
                        model, x, n_sleep=m, estimator=kind, lam=cfg.lam_rule,
                        intercept=cfg.intercept,
                    ),
                    device,
                )  # fmt: skip
                lams[m], ells[m] = est.lam, float(est.kernel.lengthscale.detach())
                medians[m] = median_distance(est.sleep[1])
                setup += dt
            info["setup_s"] = setup
            info["lambda"] = {str(m): lam for m, lam in lams.items()}
            info["lengthscale"] = {str(m): ell for m, ell in ells.items()}
            info["median_heuristic"] = {str(m): med for m, med in medians.items()}
            bar.update(1)
        else:
            budgets = cfg.particle_sizes
            encoder, info["encoder"] = train_encoder(
                method, model, x, cfg, _common.sub_seed(seed, problem, method, "encoder")
            )
            bar.update(1)
        per_estimate = method in AMORTISED and cfg.lam_rule == "importance"
        for budget in budgets:
            fn = estimator_fn(
                method, model, x, budget, encoder=encoder,
                lam=cfg.lam_rule if per_estimate else lams.get(budget),
                lengthscale=None if per_estimate else ells.get(budget), intercept=intercept,
            )  # fmt: skip
            cos, rel, length, secs = [], [], [], []
            for r in range(cfg.repeats):
                torch.manual_seed(_common.sub_seed(seed, problem, method, budget, r))
                g, dt = _common.timed(lambda fn=fn: theta_gradient(model, fn()), device)
                cos.append(float(torch.nn.functional.cosine_similarity(g, g_star, dim=0)))
                rel.append(float((g - g_star).norm() / g_star.norm()))
                length.append(float(g.norm() / g_star.norm()))
                secs.append(dt)
            (c_m, c_s), (r_m, r_s) = _common.mean_std(cos), _common.mean_std(rel)
            (l_m, l_s) = _common.mean_std(length)
            info["points"].append(
                {"budget": budget, "cosine": c_m, "cosine_std": c_s, "rel_error": r_m,
                 "rel_error_std": r_s, "length_ratio": l_m, "length_ratio_std": l_s,
                 "seconds": statistics.fmean(secs),
                 "log_joint_evals": budget if method in AMORTISED else budget * x.shape[0]}
            )  # fmt: skip
            if method in AMORTISED and budget in cfg.oracle_sizes:
                info["points"][-1]["oracle"] = oracle(
                    method, model, x, budget, g_star, cfg, seed, problem, medians[budget]
                )
            bar.update(1)
        if encoder is not None:
            # the same measurement with an untrained encoder (N(0, I) or uniform: the prior)
            torch.manual_seed(_common.sub_seed(seed, problem, method, "untrained"))
            fresh = encoder_for(model, hidden=cfg.encoder_hidden)
            fn = estimator_fn(method, model, x, budgets[-1], encoder=fresh)
            cos, rel = [], []
            for r in range(cfg.repeats):
                torch.manual_seed(_common.sub_seed(seed, problem, method, "untrained", r))
                g = theta_gradient(model, fn())
                cos.append(float(torch.nn.functional.cosine_similarity(g, g_star, dim=0)))
                rel.append(float((g - g_star).norm() / g_star.norm()))
            info["untrained_encoder"] = {
                "budget": budgets[-1], "cosine": statistics.fmean(cos),
                "rel_error": statistics.fmean(rel),
            }  # fmt: skip
        record["methods"][method] = info
    # matched wall-clock: the amortised expfam estimate at its largest M sets the budget
    t_star = record["methods"]["amortised_expfam"]["points"][-1]["seconds"]
    record["matched_time_s"] = t_star
    for info in record["methods"].values():
        fits = [p for p in info["points"] if p["seconds"] <= t_star]
        info["matched"] = dict(fits[-1] if fits else info["points"][0], over_time=not fits)
    return record


# ------------------------------------------------------------------------------------------
def flat_metrics(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for problem, rec in records.items():
        metrics[f"{problem}_matched_time_s"] = rec["matched_time_s"]
        metrics[f"{problem}_exact_gradient_norm"] = rec["exact_gradient_norm"]
        for method, info in rec["methods"].items():
            last = info["points"][-1]
            key = f"{problem}_{method}"
            metrics[f"{key}_cosine"] = last["cosine"]
            metrics[f"{key}_rel_error"] = last["rel_error"]
            metrics[f"{key}_seconds"] = last["seconds"]
            metrics[f"{key}_cosine_matched_time"] = info["matched"]["cosine"]
            metrics[f"{key}_rel_error_matched_time"] = info["matched"]["rel_error"]
            if "encoder" in info:
                metrics[f"{key}_encoder_train_s"] = info["encoder"]["seconds"]
                metrics[f"{key}_cosine_untrained_encoder"] = info["untrained_encoder"]["cosine"]
                metrics[f"{key}_rel_error_untrained_encoder"] = info["untrained_encoder"][
                    "rel_error"
                ]
            if "setup_s" in info:
                metrics[f"{key}_setup_s"] = info["setup_s"]
                metrics[f"{key}_length_ratio"] = last["length_ratio"]
            for p in info["points"]:
                if "oracle" in p:
                    at = f"{key}_m{p['budget']}"
                    metrics[f"{at}_rel_error"] = p["rel_error"]
                    metrics[f"{at}_length_ratio"] = p["length_ratio"]
                    metrics[f"{at}_oracle_rel_error"] = p["oracle"]["rel_error"]
                    metrics[f"{at}_oracle_ratio"] = p["rel_error"] / p["oracle"]["rel_error"]
    for method in METHODS:
        for stat in ("cosine", "rel_error", "cosine_matched_time"):
            vals = [metrics[f"{p}_{method}_{stat}"] for p in records]
            metrics[f"{method}_{stat}"] = statistics.fmean(vals)
    for method in BASELINES:
        vals = [metrics[f"{p}_{method}_cosine_untrained_encoder"] for p in records]
        metrics[f"{method}_cosine_untrained_encoder"] = statistics.fmean(vals)
    for stat in ("cosine", "rel_error", "cosine_matched_time"):
        metrics[f"amortised_{stat}"] = metrics[f"amortised_expfam_{stat}"]
        metrics[f"iwae_{stat}"] = metrics[f"iwae50_{stat}"]
    return metrics


def oracle_markdown(records: dict[str, dict[str, Any]], cfg: Config) -> str:
    """The defaults against the grid oracle, per model, estimator and M."""
    rows = []
    for problem, rec in records.items():
        for method in AMORTISED:
            info = rec["methods"][method]
            for p in info["points"]:
                if "oracle" not in p:
                    continue
                o, m = p["oracle"], str(p["budget"])
                med = info["median_heuristic"][m]
                rows.append([
                    problem, LABELS[method], p["budget"],
                    f"ℓ = {info['lengthscale'][m] / med:.2g}×med, λ = {info['lambda'][m]:.2g}",
                    f"{p['rel_error']:.3f} ± {p['rel_error_std']:.3f}",
                    f"{p['length_ratio']:.3f}",
                    f"ℓ = {o['factor']:.2g}×med, λ = {o['lam']:.2g}", f"{o['rel_error']:.3f}",
                    f"{p['rel_error'] / o['rel_error']:.2f}",
                ])  # fmt: skip
    return _common.markdown_table(
        ["model", "estimator", "M", "default (ℓ, λ)", "rel. error", "‖g‖/‖g*‖",
         "oracle (ℓ, λ)", "oracle rel. error", "default / oracle"],
        rows,
    )  # fmt: skip


def results_markdown(records: dict[str, dict[str, Any]], cfg: Config) -> list[tuple[str, str]]:
    sections = []
    titles = {"fa": "Factor analysis", "gmm": "Gaussian mixture"}
    for problem, rec in records.items():
        rows = []
        for method, info in rec["methods"].items():
            last, mt = info["points"][-1], info["matched"]
            unit = "M" if method in AMORTISED else "S"
            rows.append([
                LABELS[method], f"{unit}={last['budget']}", last["seconds"],
                f"{last['cosine']:.4f} ± {last['cosine_std']:.4f}",
                f"{last['rel_error']:.3f} ± {last['rel_error_std']:.3f}",
                f"{unit}={mt['budget']}" + (" (over)" if mt["over_time"] else ""),
                f"{mt['cosine']:.4f}", f"{mt['rel_error']:.3f}",
                f"{info['untrained_encoder']['cosine']:.4f}" if "untrained_encoder" in info
                else "n/a",
            ])  # fmt: skip
        table = _common.markdown_table(
            ["method", "largest budget", "s / estimate", "cosine", "rel. error",
             "matched-time budget", "cosine", "rel. error", "cosine, untrained encoder"],
            rows,
        )  # fmt: skip
        body = (
            f"{rec['n_parameters']} parameters, N = {cfg.n_data}, ‖g*‖ = "
            f"{rec['exact_gradient_norm']:.3g}; mean ± std over {cfg.repeats} repeats; "
            f"matched time = {rec['matched_time_s']:.3g} s per estimate (amortised expfam at "
            f"M = {cfg.sleep_sizes[-1]}); the last column uses a fresh encoder (the prior as "
            "proposal) at the largest budget.\n\n" + table
        )
        sections.append((titles[problem], body))
    return sections


def plot(records: dict[str, dict[str, Any]], out: Path) -> list[str]:
    plt = _common.pyplot()
    if plt is None:
        return []
    files = []
    for stat, ylabel, name in (
        ("rel_error", "relative error ‖g − g*‖ / ‖g*‖", "relative_error.png"),
        ("cosine", "cosine similarity to g*", "cosine.png"),
    ):
        fig, axes = plt.subplots(len(records), 2, figsize=(11, 4.2 * len(records)), squeeze=False)
        for row, (problem, rec) in enumerate(records.items()):
            for col, xkey in enumerate(("budget", "seconds")):
                ax = axes[row][col]
                for method, info in rec["methods"].items():
                    pts = info["points"]
                    ax.errorbar(
                        [p[xkey] for p in pts], [p[stat] for p in pts],
                        yerr=[p[f"{stat}_std"] for p in pts], marker="o", ms=3, capsize=2,
                        ls="--" if method in BASELINES else "-", label=LABELS[method],
                    )  # fmt: skip
                ax.set_xscale("log")
                if stat == "rel_error":
                    ax.set_yscale("log")
                ax.set_xlabel(
                    "samples: M sleep (amortised, shared) / S per datum (baselines)"
                    if xkey == "budget"
                    else "seconds per gradient estimate"
                )
                ax.set_ylabel(ylabel)
                against = "samples" if col == 0 else "time"
                what = "relative error" if stat == "rel_error" else "cosine"
                ax.set_title(f"{problem}: {what} vs {against}")
                if xkey == "seconds":
                    ax.axvline(rec["matched_time_s"], color="gray", lw=0.8, ls=":")
                ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None,
) -> dict[str, float]:  # fmt: skip
    """Runs the experiment, writes the files into ``out``, returns the flat metrics."""
    cfg = config or (QUICK if quick else FULL)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    n_tasks = len(PROBLEMS) * (
        len(METHODS) + len(AMORTISED) * len(cfg.sleep_sizes)
        + len(BASELINES) * len(cfg.particle_sizes)
    )  # fmt: skip
    from tqdm.auto import tqdm

    records: dict[str, dict[str, Any]] = {}
    with tqdm(total=n_tasks, desc=NAME, unit="task", disable=not progress) as bar:
        for problem in PROBLEMS:
            records[problem] = run_problem(problem, cfg, seed, device, bar)
    metrics = flat_metrics(records)
    plots = plot(records, out)
    details = {"problems": records, "plots": plots}
    _common.write_metrics(out, metrics, details, env)
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. "
        "Budgets: M = sleep samples shared by the batch (amortised), S = samples per datum "
        "(baselines). Baseline encoders were trained for the fixed model first "
        f"({cfg.encoder_steps} Adam steps, not timed here). See the module docstring of "
        "fastamort.experiments.gradient_estimation for the protocol."
    )  # fmt: skip
    oracle_note = (
        f"Default rule lam={cfg.lam_rule!r}, intercept={cfg.intercept}; oracle grid "
        f"ℓ ∈ {list(cfg.oracle_factors)} × the "
        f"median heuristic, λ ∈ {list(cfg.oracle_lambdas)}, best mean relative error over the "
        f"same {cfg.repeats} sleep sets, chosen with the exact gradient (optimistic)."
        + (
            " The default chooses (ℓ, λ) on each estimate's own sleep set; the column "
            "'default (ℓ, λ)' is its choice on the set-up sleep set."
            if cfg.lam_rule == "importance"
            else ""
        )
        + "\n\n"
    )
    _common.write_results_md(
        out, "gradient-estimation",
        [*results_markdown(records, cfg),
         ("Defaults against the (ℓ, λ) grid oracle", oracle_note + oracle_markdown(records, cfg)),
         ("Notes", notes)],
    )  # fmt: skip
    return metrics
