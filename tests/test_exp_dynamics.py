"""The state-space models (LatentOscillator, HodgkinHuxley) and the dynamics experiment."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_quick

import fastamort
from fastamort.experiments.dynamics import particle_filter
from fastamort.models.base import is_expfam
from fastamort.models.dynamics import HodgkinHuxley, LatentOscillator


def _current(t: int = 200) -> torch.Tensor:
    current = torch.zeros(t)
    current[20:180] = 10.0
    return current


# --- LatentOscillator -----------------------------------------------------------------------
def test_oscillator_shapes_dtype_and_protocol():
    torch.manual_seed(0)
    model = LatentOscillator(n_steps=7, n_pixels=11)
    z, x = model.sample(5)
    assert z.shape == (5, 7, 2) and x.shape == (5, 7, 11)
    assert z.dtype == x.dtype == torch.float32
    assert is_expfam(model)
    assert model.log_joint(z, x).shape == (5,)
    assert model.log_joint(z.reshape(5, -1), x).shape == (5,)  # a flat latent is accepted
    z64, x64 = model.double().sample(3)
    assert z64.dtype == x64.dtype == torch.float64
    assert model.log_joint(z64, x64).dtype == torch.float64


def test_oscillator_period_and_limit_radius():
    model = LatentOscillator()
    assert model.period() == pytest.approx(12.0)
    r = model.limit_radius()
    assert r == pytest.approx(1 / (1 + math.exp(-4 * (r - 0.3))), abs=1e-6)
    # the noise-free dynamics settle on a circle of that radius, advancing ω per step
    z = torch.tensor([[0.2, 0.1]])
    for _ in range(200):
        z = model.transition_mean(z).detach()
    nxt = model.transition_mean(z).detach()
    assert float(z.norm()) == pytest.approx(r, abs=1e-5)
    angle = torch.atan2(nxt[0, 1], nxt[0, 0]) - torch.atan2(z[0, 1], z[0, 0])
    assert float(torch.remainder(angle, 2 * math.pi)) == pytest.approx(math.pi / 6, abs=1e-5)


def test_oscillator_log_joint_matches_an_independent_reference():
    torch.manual_seed(1)
    model = LatentOscillator(n_steps=5, n_pixels=6, state_std=0.2, obs_std=0.1).double()
    z, x = model.sample(4)
    grid = torch.linspace(-1.5, 1.5, 6, dtype=torch.float64)
    ref = torch.zeros(4, dtype=torch.float64)
    w = math.pi / 6
    rot = torch.tensor([[math.cos(w), -math.sin(w)], [math.sin(w), math.cos(w)]]).double()
    for i in range(4):
        prev = torch.tensor([0.8, 0.0], dtype=torch.float64)
        for t in range(5):
            norm = prev.norm()
            mean = torch.sigmoid(4 * (norm - 0.3)) / norm * (rot @ prev)
            ref[i] += torch.distributions.Normal(mean, 0.2).log_prob(z[i, t]).sum()
            bump = torch.exp(-0.5 * ((grid - z[i, t, 0]) / 0.3) ** 2)
            ref[i] += torch.distributions.Normal(bump, 0.1).log_prob(x[i, t]).sum()
            prev = z[i, t]
    # rtol 1e-6: the model's parameters are float32 values (made before .double()), up to
    # 4e-8 off the reference's exact constants
    torch.testing.assert_close(model.log_joint(z, x), ref, rtol=1e-6, atol=1e-9)


def test_oscillator_sampling_statistics():
    torch.manual_seed(2)
    model = LatentOscillator(n_steps=10, n_pixels=8, state_std=0.15, obs_std=0.07)
    z, x = model.sample(4000)
    prev = torch.cat([model.z0.expand(4000, 1, 2), z[:, :-1]], 1)
    state_res = z - model.transition_mean(prev).detach()
    obs_res = x - model.frames(z).detach()
    assert float(state_res.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(state_res.std()) == pytest.approx(0.15, rel=0.02)
    assert float(obs_res.std()) == pytest.approx(0.07, rel=0.02)


def test_oscillator_bad_arguments():
    with pytest.raises(ValueError, match="n_steps"):
        LatentOscillator(n_steps=0)
    with pytest.raises(TypeError, match="n_pixels"):
        LatentOscillator(n_pixels=2.5)
    with pytest.raises(ValueError, match="omega"):
        LatentOscillator(omega=4.0)
    with pytest.raises(ValueError, match="state_std"):
        LatentOscillator(state_std=-0.1)
    with pytest.raises(TypeError, match="gain"):
        LatentOscillator(gain="big")
    with pytest.raises(ValueError, match="z0"):
        LatentOscillator(z0=(1.0, 2.0, 3.0))


def test_particle_filter_prefers_the_true_model():
    torch.manual_seed(3)
    truth = LatentOscillator(n_steps=12)
    wrong = LatentOscillator(n_steps=12, omega=2 * math.pi / 7)
    x = truth.sample(20)[1]
    ll_true, pred = particle_filter(truth, x[:, :6], 300, horizon=6)
    ll_wrong, _ = particle_filter(wrong, x[:, :6], 300)
    assert pred.shape == (20, 6, 20)
    assert float(ll_true.mean()) > float(ll_wrong.mean()) + 10


def test_oscillator_amortised_gradient_reaches_every_parameter():
    torch.manual_seed(4)
    data = LatentOscillator(n_steps=6).sample(20)[1]
    model = LatentOscillator(n_steps=6, omega=1.0, state_std=0.3)
    fastamort.amortised_objective(model, data, n_sleep=200).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


# --- HodgkinHuxley --------------------------------------------------------------------------
def test_hh_shapes_dtype_and_spikes():
    torch.manual_seed(5)
    model = HodgkinHuxley(_current(), subsample=10).double()
    z, x = model.sample(6)
    assert z.shape == (6, 200, 4) and x.shape == (6, 20)
    assert z.dtype == x.dtype == torch.float64
    assert model.obs_dim == 20
    assert model.log_joint(z, x).shape == (6,)
    v = z[..., 0]
    assert float(v.max()) > 20.0  # at least one action potential under 10 µA/cm²
    gates = z[..., 1:]
    assert float(gates.min()) >= 0.0 and float(gates.max()) <= 1.0
    torch.testing.assert_close(model.mean(z), z[:, 9::10, 0])


def test_hh_rates_match_the_closed_form():
    model = HodgkinHuxley(_current())
    v = torch.tensor([-75.0, -62.3, -30.0, 10.0], dtype=torch.float64)
    u = v + 60.0
    ref = (
        -0.32 * (u - 13) / (torch.exp(-(u - 13) / 4) - 1),
        0.28 * (u - 40) / (torch.exp((u - 40) / 5) - 1),
        0.128 * torch.exp(-(u - 17) / 18),
        4 / (1 + torch.exp(-(u - 40) / 5)),
        -0.032 * (u - 15) / (torch.exp(-(u - 15) / 5) - 1),
        0.5 * torch.exp(-(u - 10) / 40),
    )
    for got, want in zip(model.rates(v), ref, strict=True):
        torch.testing.assert_close(got, want)
    # the removable singularity: α_m at u = 13 is 0.32·4 = 1.28
    a_m = model.rates(torch.tensor([-47.0], dtype=torch.float64))[0]
    torch.testing.assert_close(a_m, torch.tensor([1.28], dtype=torch.float64))


def test_hh_log_joint_matches_an_independent_reference():
    torch.manual_seed(6)
    current = _current(30)
    model = HodgkinHuxley(current, g_na=45.0, g_k=4.0, g_l=0.15, subsample=5).double()
    z, x = model.sample(3)
    g_na, g_k, g_l = model.conductances().tolist()  # 45, 4, 0.15 up to float32 rounding
    assert (g_na, g_k, g_l) == pytest.approx((45.0, 4.0, 0.15), rel=1e-6)
    ref = torch.zeros(3, dtype=torch.float64)
    for i in range(3):
        v, gates = model.initial_state(1, torch.float64)
        v, gates = float(v), gates[0]
        for t in range(30):
            m, h, n = gates.tolist()
            i_ion = g_na * m**3 * h * (v - 50.0) + g_k * n**4 * (v + 90.0) + g_l * (v + 70.42)
            mean = v + 0.05 * (float(current[t]) - i_ion)
            mean = torch.tensor(mean, dtype=torch.float64)  # a float would make it float32
            ref[i] += torch.distributions.Normal(mean, 0.5).log_prob(z[i, t, 0])
            v, gates = float(z[i, t, 0]), z[i, t, 1:]
        ref[i] += torch.distributions.Normal(z[i, 4::5, 0], 1.0).log_prob(x[i]).sum()
    # rtol 1e-6: the model's parameters are float32 values (made before .double()), up to
    # 4e-8 off the reference's exact constants
    torch.testing.assert_close(model.log_joint(z, x), ref, rtol=1e-6, atol=1e-9)


def test_hh_sampling_statistics():
    torch.manual_seed(7)
    model = HodgkinHuxley(_current(60), state_std=0.3, obs_std=2.0).double()
    z, x = model.sample(3000)
    v0, g0 = model.initial_state(3000, torch.float64)
    prev_v = torch.cat([v0[:, None], z[:, :-1, 0]], 1)
    prev_g = torch.cat([g0[:, None], z[:, :-1, 1:]], 1)
    res = z[..., 0] - prev_v - model.dt * model.drift(prev_v, prev_g, model.current.double())
    assert float(res.detach().std()) == pytest.approx(0.3, rel=0.02)
    assert float((x - model.mean(z)).std()) == pytest.approx(2.0, rel=0.03)


def test_hh_gradient_reaches_the_conductances_only():
    torch.manual_seed(8)
    model = HodgkinHuxley(_current(100)).double()
    data = model.sample(10)[1]
    fastamort.amortised_objective(model, data, n_sleep=100).backward()
    assert model.log_g.grad is not None and bool(torch.isfinite(model.log_g.grad).all())
    assert not model.likelihood.log_std.requires_grad


def test_hh_bad_arguments():
    with pytest.raises(TypeError, match="current"):
        HodgkinHuxley([0.0, 1.0])
    with pytest.raises(ValueError, match="current"):
        HodgkinHuxley(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="current"):
        HodgkinHuxley(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="subsample"):
        HodgkinHuxley(torch.zeros(5), subsample=10)
    with pytest.raises(ValueError, match="g_na"):
        HodgkinHuxley(torch.zeros(5), g_na=-1.0, subsample=1)
    with pytest.raises(ValueError, match="dt"):
        HodgkinHuxley(torch.zeros(5), dt=0.0, subsample=1)
    with pytest.raises(ValueError, match="e_k"):
        HodgkinHuxley(torch.zeros(5), e_k=float("inf"), subsample=1)


# --- the experiment -------------------------------------------------------------------------
@pytest.mark.slow
def test_dynamics_quick_run(tmp_path):
    flat = run_quick("dynamics", tmp_path)
    # the oscillator: the period is found (from 9 to 12) and the learned model predicts
    assert flat["osc_period_rel_error"] < 0.05
    assert flat["osc_pred_mse_learned"] < 0.5 * flat["osc_pred_mse_initial"]
    assert flat["osc_pred_mse_learned"] < flat["osc_pred_mse_repeat_last"]
    assert flat["osc_heldout_ll_learned"] > flat["osc_heldout_ll_initial"] + 100
    # Hodgkin–Huxley: the conductances move towards the truth
    assert flat["hh_mean_rel_error"] < 0.6 * flat["hh_mean_rel_error_initial"]
    assert flat["hh_g_k_rel_error"] < flat["hh_g_k_rel_error_initial"]
    assert "| conductance |" in (tmp_path / "results.md").read_text()
    pytest.importorskip("matplotlib")
    for name in ("oscillator.png", "prediction.png", "hodgkin_huxley.png"):
        assert (tmp_path / name).exists(), name
