"""dynamics: a latent limit-cycle oscillator seen through images, and a Hodgkin–Huxley neuron.

Two parts (paper §5.3 a and c; the authors' ``Dynamical_sinusoids.ipynb`` and
``Dynamical_HH.ipynb``). Both train with :class:`fastamort.AmortisedLearner` (exponential-
family estimator, Gaussian kernel on the raw observations with the median-heuristic
lengthscale and leave-one-out λ at the start, both then learned on held-out sleep samples,
kernel Adam lr 1e-2), full-batch: each step uses all training sequences as the wake batch.
The latent is the whole state trajectory, drawn by simulating the model.

**Oscillator** (:class:`~fastamort.models.LatentOscillator`). True model as in the authors'
notebook: z_0 = (0.8, 0), rotation ω = π/6 per step (period 12), radial squashing
sigmoid(4(‖z‖ − 0.3)) (limit-cycle radius 0.924), state noise 0.1, frames of 20 pixels on
[−1.5, 1.5] with a bump of width 0.3 at z_{t,1}, pixel noise 0.05; T = 20 steps.
``osc_train`` training sequences, ``osc_test`` held-out ones. The learned model has the same
parametric form (all six parameters learned: ω, gain, centre, state noise, width, pixel noise;
the paper's fitted model was an MLP) and starts from period ``osc_init_period`` (ω = 2π/9),
gain 2, centre 0, state noise 0.3, width 0.5, pixel noise 0.3. Metrics:

* the learned period 2π/ω against the true 12 (``osc_period``, ``osc_period_rel_error``) and
  the limit-cycle radius;
* held-out log-likelihood per sequence, log p(x_{1:T}), by a bootstrap particle filter with
  ``n_particles`` particles, under the true, learned and initial models;
* prediction: given the first half of a held-out sequence (T/2 frames), the particle filter's
  particles are simulated forward and the mean predicted frame is compared with the observed
  second half: mean squared error per pixel, for the true, learned and initial models and two
  trivial baselines: repeating the last observed frame, and the mean training frame at each
  time step. The pixel-noise floor is 0.05² = 0.0025.

**Hodgkin–Huxley** (:class:`~fastamort.models.HodgkinHuxley`, Pospischil et al. 2008
kinetics). A reduced version of the authors' set-up for the CPU: dt = 0.05 ms, T = 400 steps
(20 ms), input current 10 µA/cm² from 2 to 18 ms and 0 otherwise, Euler–Maruyama voltage noise
0.5 mV per step, voltage observed every 10 steps (0.5 ms) with noise 1 mV. True conductances
(g_Na, g_K, g_L) = (50, 5, 0.1) mS/cm² (the authors' values); ``hh_train`` noisy trials with
the same input; the three conductances are learned (as logs) from the authors' initial values
(40, 3, 0.2); all other constants, both noise levels and the input current are known. The Adam
learning rate decays linearly to a tenth over the second half of the steps. Metric: the
relative error |ĝ − g*| / g* per conductance at the end, against the initial guess.

Full configuration (the ``Config`` defaults): oscillator 50 training / 50 test sequences,
M = 1000 sleep samples, M' = 200 held-out, 150 steps, lr 0.03, 1000 particles; HH 20 trials,
M = 1000, M' = 200, 200 steps, lr 0.03. Quick: oscillator 40 steps with M = 300, M' = 100,
30 test sequences and 500 particles; HH 40 steps with M = 300, M' = 100 and lr 0.05.
Plots: ``oscillator.png`` (data, latent paths and samples of the true and learned models),
``prediction.png`` (error against horizon), ``hodgkin_huxley.png`` (conductance traces and
voltage traces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import fastamort
from fastamort.models.dynamics import HodgkinHuxley, LatentOscillator
from fastamort.ops.standard_normal import torch_stream

from . import _common, _features

NAME = "dynamics"


@dataclass(frozen=True)
class Config:
    """Sizes and budgets of one run."""

    # oscillator
    osc_steps_t: int = 20
    osc_pixels: int = 20
    osc_train: int = 50
    osc_test: int = 50
    osc_init_period: float = 9.0
    osc_n_sleep: int = 1000
    osc_n_held_out: int = 200
    osc_lr: float = 0.03
    osc_steps: int = 150
    n_particles: int = 1000
    # Hodgkin–Huxley
    hh_steps_t: int = 400
    hh_dt: float = 0.05
    hh_subsample: int = 10
    hh_current: float = 10.0
    hh_on: tuple[int, int] = (40, 360)
    hh_state_std: float = 0.5
    hh_obs_std: float = 1.0
    hh_true: tuple[float, float, float] = (50.0, 5.0, 0.1)
    hh_init: tuple[float, float, float] = (40.0, 3.0, 0.2)
    hh_train: int = 20
    hh_n_sleep: int = 1000
    hh_n_held_out: int = 200
    hh_lr: float = 0.03
    hh_steps: int = 200
    kernel_lr: float = 1e-2
    features: str = "none"  # the amortised learner's kernel: "none" or "linear-bn"
    feature_width: int = 100


FULL = Config()
QUICK = Config(
    osc_n_sleep=300, osc_n_held_out=100, osc_steps=40, osc_test=30, n_particles=500,
    hh_n_sleep=300, hh_n_held_out=100, hh_steps=40, hh_lr=0.05,
)  # fmt: skip

OSC_INIT = {"gain": 2.0, "centre": 0.0, "state_std": 0.3, "width": 0.5, "obs_std": 0.3}


# ------------------------------------------------------------------------------------------
def oscillator_models(cfg: Config) -> tuple[LatentOscillator, LatentOscillator, LatentOscillator]:
    """(true, initial, to-be-learned) oscillators; the last two start equal."""
    kw = {"n_steps": cfg.osc_steps_t, "n_pixels": cfg.osc_pixels}
    truth = LatentOscillator(**kw)
    init = LatentOscillator(**kw, omega=2 * math.pi / cfg.osc_init_period, **OSC_INIT)
    learned = LatentOscillator(**kw, omega=2 * math.pi / cfg.osc_init_period, **OSC_INIT)
    return truth, init, learned


@torch.no_grad()
def particle_filter(
    model: LatentOscillator, x: torch.Tensor, n_particles: int, horizon: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bootstrap particle filter over all frames of x (S, T0, P).

    Returns (log p(x_{1:T0}) per sequence (S,), mean predicted noise-free frames for the next
    ``horizon`` steps (S, horizon, P), or None when horizon = 0).
    """
    s, t0, _ = x.shape
    state = model.z0.expand(s, n_particles, 2)
    std = model.log_state_std.exp()
    log_z = torch.zeros(s, dtype=x.dtype)
    for t in range(t0):
        state = model.transition_mean(state) + std * torch.randn_like(state)
        logw = model.log_emission(state, x[:, t, None, :])  # (S, P)
        log_z += torch.logsumexp(logw, 1) - math.log(n_particles)
        idx = torch.multinomial(torch.softmax(logw, 1), n_particles, replacement=True)
        state = torch.gather(state, 1, idx[..., None].expand(-1, -1, 2))
    if horizon == 0:
        return log_z, None
    future = model.simulate(state, horizon)  # (S, P, H, 2)
    return log_z, model.frames(future).mean(1)


def run_oscillator(cfg: Config, seed: int, progress: bool) -> tuple[dict[str, Any], dict]:
    torch.manual_seed(_common.sub_seed(seed, "osc-data"))
    truth, init, learned = oscillator_models(cfg)
    with torch_stream():  # the data sets: a function of the seed alone
        x_train = truth.sample(cfg.osc_train)[1]
        z_test, x_test = truth.sample(cfg.osc_test)
    torch.manual_seed(_common.sub_seed(seed, "osc-train"))
    kernel = _features.feature_kernel(
        cfg.features, x_train[0].numel(), cfg.feature_width, seed=seed, like=x_train
    )
    learner = fastamort.AmortisedLearner(
        learned, kernel=kernel, n_sleep=cfg.osc_n_sleep, n_held_out=cfg.osc_n_held_out,
        lr=cfg.osc_lr, kernel_lr=cfg.kernel_lr, seed=seed,
    )  # fmt: skip
    trace: list[dict[str, float]] = []

    def record(_learner, rec) -> None:
        trace.append({"step": rec["step"], "period": learned.period(),
                      "objective": rec["objective"]})  # fmt: skip

    _, seconds = _common.timed(
        lambda: learner.fit(x_train, epochs=cfg.osc_steps, batch_size=cfg.osc_train,
                            progress=progress, callbacks=[record]),
        torch.device("cpu"),
    )  # fmt: skip
    half = cfg.osc_steps_t // 2
    models = {"true": truth, "learned": learned, "initial": init}
    res: dict[str, Any] = {"train_seconds": seconds, "models": {}}
    with torch.no_grad():
        for name, model in models.items():
            torch.manual_seed(_common.sub_seed(seed, "pf", name))
            ll, _ = particle_filter(model, x_test, cfg.n_particles)
            torch.manual_seed(_common.sub_seed(seed, "pred", name))
            _, pred = particle_filter(
                model, x_test[:, :half], cfg.n_particles, cfg.osc_steps_t - half
            )
            err = ((pred - x_test[:, half:]) ** 2).mean((0, 2))  # per horizon
            res["models"][name] = {
                "period": model.period(),
                "radius": model.limit_radius(),
                "state_std": float(model.log_state_std.exp()),
                "width": float(model.log_width.exp()),
                "obs_std": float(model.likelihood.log_std.exp()),
                "heldout_ll": float(ll.mean()),
                "heldout_ll_sem": float(ll.std() / math.sqrt(ll.numel())),
                "pred_mse": float(err.mean()),
                "pred_mse_by_horizon": err.tolist(),
            }
        last = x_test[:, half - 1 : half]
        mean_frames = x_train.mean(0)[None, half:]
        for name, pred in (("repeat_last", last), ("mean_frame", mean_frames)):
            err = ((pred - x_test[:, half:]) ** 2).mean((0, 2))
            res["models"][name] = {"pred_mse": float(err.mean()),
                                   "pred_mse_by_horizon": err.tolist()}  # fmt: skip
    res["trace"] = trace
    res["final_lengthscale"] = learner.history[-1]["lengthscale"]
    res["final_lambda"] = learner.history[-1]["lam"]
    arrays = {"x_train": x_train, "z_test": z_test, "truth": truth, "learned": learned}
    return res, arrays


# ------------------------------------------------------------------------------------------
def hh_current(cfg: Config) -> torch.Tensor:
    current = torch.zeros(cfg.hh_steps_t)
    current[cfg.hh_on[0] : cfg.hh_on[1]] = cfg.hh_current
    return current


def hh_model(cfg: Config, g: tuple[float, float, float]) -> HodgkinHuxley:
    return HodgkinHuxley(
        hh_current(cfg), g_na=g[0], g_k=g[1], g_l=g[2], dt=cfg.hh_dt,
        subsample=cfg.hh_subsample, state_std=cfg.hh_state_std, obs_std=cfg.hh_obs_std,
    ).double()  # fmt: skip


def run_hh(cfg: Config, seed: int, progress: bool) -> tuple[dict[str, Any], dict]:
    torch.manual_seed(_common.sub_seed(seed, "hh-data"))
    truth = hh_model(cfg, cfg.hh_true)
    with torch_stream():  # the data set: a function of the seed alone
        z_train, x_train = truth.sample(cfg.hh_train)
    model = hh_model(cfg, cfg.hh_init)
    torch.manual_seed(_common.sub_seed(seed, "hh-train"))
    kernel = _features.feature_kernel(
        cfg.features, x_train[0].numel(), cfg.feature_width, seed=seed, like=x_train
    )
    learner = fastamort.AmortisedLearner(
        model, kernel=kernel, n_sleep=cfg.hh_n_sleep, n_held_out=cfg.hh_n_held_out, lr=cfg.hh_lr,
        kernel_lr=cfg.kernel_lr, seed=seed,
    )  # fmt: skip
    trace: list[list[float]] = []
    half = cfg.hh_steps // 2

    def schedule(_learner, rec) -> None:
        trace.append(model.conductances().detach().tolist())
        frac = min(1.0, max(0.0, (rec["step"] - half) / max(1, cfg.hh_steps - half)))
        for group in learner.optimizer.param_groups:
            group["lr"] = cfg.hh_lr * (1.0 - 0.9 * frac)

    _, seconds = _common.timed(
        lambda: learner.fit(x_train, epochs=cfg.hh_steps, batch_size=cfg.hh_train,
                            progress=progress, callbacks=[schedule]),
        torch.device("cpu"),
    )  # fmt: skip
    final = model.conductances().detach().tolist()
    res: dict[str, Any] = {"train_seconds": seconds, "params": {}}
    for i, name in enumerate(HodgkinHuxley.PARAMETER_NAMES):
        g_true, g0, g1 = cfg.hh_true[i], cfg.hh_init[i], final[i]
        res["params"][name] = {
            "true": g_true, "initial": g0, "learned": g1,
            "rel_error_initial": abs(g0 - g_true) / g_true,
            "rel_error": abs(g1 - g_true) / g_true,
        }  # fmt: skip
    res["trace"] = trace
    spikes = ((z_train[:, 1:, 0] > 0) & (z_train[:, :-1, 0] <= 0)).sum(1).double()
    res["spikes_per_trial"] = float(spikes.mean())
    arrays = {"z_train": z_train, "x_train": x_train, "truth": truth, "learned": model}
    return res, arrays


# ------------------------------------------------------------------------------------------
def plot(osc: dict, osc_arr: dict, hh: dict, hh_arr: dict, cfg: Config, out: Path) -> list[str]:
    plt = _common.pyplot()
    if plt is None:
        return []
    files = []
    torch.manual_seed(0)
    with torch.no_grad():
        z_true = osc_arr["truth"].sample(3)[0].numpy()
        z_fit, x_fit = (t.numpy() for t in osc_arr["learned"].sample(3))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    axes[0].imshow(osc_arr["x_train"][0].T.numpy(), aspect="auto", origin="lower", cmap="gray")
    axes[0].set(title="training sequence", xlabel="t", ylabel="pixel")
    axes[1].imshow(x_fit[0].T, aspect="auto", origin="lower", cmap="gray")
    axes[1].set(title="learned model: sample", xlabel="t")
    for i in range(3):
        axes[2].plot(z_true[i, :, 0], z_true[i, :, 1], "k-", alpha=0.6, lw=1)
        axes[3].plot(z_fit[i, :, 0], z_fit[i, :, 1], "C0-", alpha=0.8, lw=1)
    axes[2].set(title="true model: latent paths", aspect="equal")
    axes[3].set(title="learned model: latent paths", aspect="equal")
    fig.tight_layout()
    fig.savefig(out / "oscillator.png", dpi=110)
    plt.close(fig)
    files.append("oscillator.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, info in osc["models"].items():
        err = info["pred_mse_by_horizon"]
        ax.plot(range(1, len(err) + 1), err, "o-", ms=3, label=name)
    ax.axhline(0.05**2, color="gray", ls=":", label="noise floor")
    ax.set(xlabel="steps ahead", ylabel="MSE per pixel", yscale="log",
           title="prediction of the second half of held-out sequences")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prediction.png", dpi=110)
    plt.close(fig)
    files.append("prediction.png")

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    tr = torch.tensor(hh["trace"]).numpy()
    for i, name in enumerate(HodgkinHuxley.PARAMETER_NAMES):
        axes[i].plot(tr[:, i], "C0")
        axes[i].axhline(cfg.hh_true[i], color="k", ls="--", label="true")
        axes[i].set(title=name, xlabel="step")
    axes[0].legend()
    torch.manual_seed(1)
    with torch.no_grad():
        z_fit = hh_arr["learned"].sample(1)[0].numpy()
    t = (torch.arange(cfg.hh_steps_t) * cfg.hh_dt).numpy()
    k = cfg.hh_subsample
    z_train, x_train = hh_arr["z_train"].numpy(), hh_arr["x_train"].numpy()
    axes[3].plot(t, z_train[0, :, 0], "k", lw=1, label="true trial (latent V)")
    axes[3].plot(t[k - 1 :: k][: x_train.shape[1]], x_train[0], "k.",
                 label="observations")  # fmt: skip
    axes[3].plot(t, z_fit[0, :, 0], "C0", lw=1, alpha=0.8, label="learned model sample")
    axes[3].set(xlabel="ms", ylabel="mV", title="voltage")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "hodgkin_huxley.png", dpi=110)
    plt.close(fig)
    files.append("hodgkin_huxley.png")
    return files


# ------------------------------------------------------------------------------------------
def flat_metrics(osc: dict, hh: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    om = osc["models"]
    m["osc_period_true"] = om["true"]["period"]
    m["osc_period_initial"] = om["initial"]["period"]
    m["osc_period"] = om["learned"]["period"]
    m["osc_period_rel_error"] = abs(m["osc_period"] - m["osc_period_true"]) / m["osc_period_true"]
    m["osc_radius_true"] = om["true"]["radius"]
    m["osc_radius"] = om["learned"]["radius"]
    m["osc_state_std"] = om["learned"]["state_std"]
    m["osc_obs_std"] = om["learned"]["obs_std"]
    m["osc_width"] = om["learned"]["width"]
    for name in ("true", "learned", "initial"):
        m[f"osc_heldout_ll_{name}"] = om[name]["heldout_ll"]
    for name in ("true", "learned", "initial", "repeat_last", "mean_frame"):
        m[f"osc_pred_mse_{name}"] = om[name]["pred_mse"]
    m["osc_train_s"] = osc["train_seconds"]
    errs, errs0 = [], []
    for name, p in hh["params"].items():
        m[f"hh_{name}"] = p["learned"]
        m[f"hh_{name}_rel_error"] = p["rel_error"]
        m[f"hh_{name}_rel_error_initial"] = p["rel_error_initial"]
        errs.append(p["rel_error"])
        errs0.append(p["rel_error_initial"])
    m["hh_mean_rel_error"] = sum(errs) / len(errs)
    m["hh_mean_rel_error_initial"] = sum(errs0) / len(errs0)
    m["hh_train_s"] = hh["train_seconds"]
    return m


def run(
    *, quick: bool = False, seed: int = 0, out: Path, device: torch.device, progress: bool = True,
    config: Config | None = None, features: str = "none",
) -> dict[str, float]:  # fmt: skip
    """Runs both parts, writes the files into ``out``, returns the flat metrics."""
    if device.type != "cpu":
        raise ValueError(f"device: this experiment runs on the CPU only, got {device}")
    cfg = replace(config or (QUICK if quick else FULL), features=features)
    _features.check_features(cfg.features)
    env = _common.start_run(out, NAME, cfg, seed=seed, quick=quick, device=device)
    osc, osc_arr = run_oscillator(cfg, seed, progress)
    hh, hh_arr = run_hh(cfg, seed, progress)
    metrics = flat_metrics(osc, hh)
    plots = plot(osc, osc_arr, hh, hh_arr, cfg, out)
    _common.write_metrics(out, metrics, {"oscillator": osc, "hodgkin_huxley": hh,
                                         "plots": plots}, env)  # fmt: skip

    om = osc["models"]
    rows = [
        [name, f"{info['period']:.2f}" if "period" in info else "-",
         f"{info['radius']:.3f}" if "radius" in info else "-",
         f"{info['heldout_ll']:.1f} ± {info['heldout_ll_sem']:.1f}" if "heldout_ll" in info
         else "-", f"{info['pred_mse']:.4f}"]
        for name, info in om.items()
    ]  # fmt: skip
    osc_table = _common.markdown_table(
        ["model", "period", "radius", "held-out log p(x) / seq.", "prediction MSE / pixel"], rows
    )
    hh_rows = [
        [name, p["true"], p["initial"], f"{p['learned']:.4g}", f"{p['rel_error_initial']:.3f}",
         f"{p['rel_error']:.3f}"]
        for name, p in hh["params"].items()
    ]  # fmt: skip
    hh_table = _common.markdown_table(
        ["conductance", "true", "initial", "learned", "rel. error initial", "rel. error learned"],
        hh_rows,
    )
    command = _common.command_line(
        NAME, cfg, QUICK if quick else FULL, quick=quick, seed=seed, device=device
    )
    notes = (
        f"Command: `{command}`. Amortised learning: "
        f"{_features.describe(cfg.features, cfg.feature_width, cfg.osc_steps_t * cfg.osc_pixels)}"
        f" (oscillator; Hodgkin–Huxley: the same on its {cfg.hh_steps_t // cfg.hh_subsample}"
        "-dimensional traces). "
        f"Oscillator: {cfg.osc_steps} steps, M = {cfg.osc_n_sleep}, {cfg.osc_train} training "
        f"sequences of {cfg.osc_steps_t} frames × {cfg.osc_pixels} pixels, {cfg.osc_test} "
        f"held-out; log p(x) and predictions by a bootstrap particle filter with "
        f"{cfg.n_particles} particles; prediction = frames {cfg.osc_steps_t // 2 + 1}.."
        f"{cfg.osc_steps_t} given the first {cfg.osc_steps_t // 2} (noise floor 0.0025). "
        f"Training {osc['train_seconds']:.0f} s. Hodgkin–Huxley: {cfg.hh_steps} steps, "
        f"M = {cfg.hh_n_sleep}, {cfg.hh_train} trials of {cfg.hh_steps_t} steps "
        f"({hh['spikes_per_trial']:.1f} spikes per trial on average), training "
        f"{hh['train_seconds']:.0f} s. See the module docstring of "
        "fastamort.experiments.dynamics."
    )
    _common.write_results_md(
        out, NAME, [("Oscillator (period 12 true)", osc_table), ("Hodgkin–Huxley", hh_table),
                    ("Notes", notes)],
    )  # fmt: skip
    return metrics
