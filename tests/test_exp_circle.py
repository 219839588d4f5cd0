"""CircleGenerator (latent on the unit circle, MLP generator) and the ``circle`` experiment."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_quick

from fastamort.experiments import circle as exp
from fastamort.models.base import check_model, is_expfam
from fastamort.models.circle_image import CircleGenerator, angle_grid, circle_point


def _model(dtype=torch.float64, **kw) -> CircleGenerator:
    torch.manual_seed(0)
    return CircleGenerator(12, hidden=(16, 8), **kw).to(dtype)


def test_protocol_shapes_and_dtype():
    for dtype in (torch.float32, torch.float64):
        model = _model(dtype)
        check_model(model)
        assert is_expfam(model)
        assert model.obs_dim == 12 and model.latent_dim == 2
        torch.manual_seed(1)
        z, x = model.sample(7)
        assert z.shape == (7, 2) and x.shape == (7, 12)
        assert z.dtype == x.dtype == dtype
        assert torch.allclose(z.norm(dim=1), torch.ones(7, dtype=dtype))
        assert model.log_joint(z, x).shape == (7,)
        assert model.log_joint(z, x).dtype == dtype


def test_sampling_statistics_match_the_model():
    model = _model(init_std=0.3)
    torch.manual_seed(2)
    z, x = model.sample(40000)
    # uniform angle: E[cos a] = E[sin a] = 0, E[cos² a] = 1/2
    assert z.mean(0).abs().max() < 0.02
    assert abs(float((z[:, 0] ** 2).mean()) - 0.5) < 0.01
    with torch.no_grad():
        resid = x - model.mean(z)
    assert abs(float(resid.std()) - 0.3) < 0.005
    assert resid.mean().abs() < 0.005


def test_log_joint_matches_torch_distributions():
    model = _model(init_std=0.7)
    torch.manual_seed(3)
    z, x = model.sample(5)
    with torch.no_grad():
        std = model.likelihood.log_std.exp()  # 0.7, up to float32 rounding of the init
        assert float(std) == pytest.approx(0.7, rel=1e-6)
        ref = torch.distributions.Normal(model.mean(z), std).log_prob(x).sum(-1)
    ref = ref - math.log(2 * math.pi)
    assert torch.allclose(model.log_joint(z, x), ref, rtol=1e-10, atol=1e-10)


def test_exact_log_likelihood_against_a_fine_riemann_sum():
    model = _model(init_std=0.4)
    torch.manual_seed(4)
    _, x = model.sample(6)
    a = (torch.arange(20000, dtype=torch.float64) + 0.5) * (2 * math.pi / 20000)
    with torch.no_grad():
        mu = model.mean(circle_point(a))
        std = model.likelihood.log_std.exp()
        comp = torch.distributions.Normal(mu[None], std).log_prob(x[:, None]).sum(-1)
        ref = (torch.logsumexp(comp, dim=1) - math.log(20000)).mean()
        got = model.exact_log_likelihood(x, n_angles=720)
    assert float(got) == pytest.approx(float(ref), abs=1e-6)


def test_latent_search_finds_the_angle_of_a_noiseless_mean():
    model = _model()
    a = angle_grid(360, dtype=torch.float64)[[5, 100, 271]]
    with torch.no_grad():
        x = model.mean(circle_point(a))
    found, err = model.latent_search(x, n_angles=360)
    assert torch.allclose(found, a)
    assert float(err.max()) < 1e-20


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"obs_dim": 0}, ValueError, "obs_dim"),
        ({"obs_dim": 2.5}, ValueError, "obs_dim"),
        ({"obs_dim": 4, "hidden": (8, 0)}, ValueError, "hidden"),
        ({"obs_dim": 4, "output": "relu"}, ValueError, "output"),
        ({"obs_dim": 4, "init_std": 0.0}, ValueError, "init_std"),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CircleGenerator(**kwargs)


# ------------------------------------------------------------------------------------------
def test_gabor_generator_has_period_pi_and_the_reader_reads_it():
    cfg = exp.QUICK
    theta = torch.tensor([0.1, 0.9, 2.0], dtype=torch.float64)
    a, b = exp.gabor_patches(theta, cfg), exp.gabor_patches(theta + math.pi, cfg)
    assert a.shape == (3, cfg.image_size**2)
    assert torch.allclose(a, b, atol=1e-12)
    reader = exp.OrientationReader(cfg, torch.device("cpu"))
    got, corr = reader(a)
    err = exp.wrap(2 * (got - theta)).abs() / 2
    assert float(err.max()) < math.pi / cfg.n_templates
    assert float(corr.min()) > 0.99


@pytest.mark.parametrize("winding, sign", [(1, 1), (1, -1), (2, 1), (2, -1)])
def test_orientation_fit_recovers_winding_and_offset(winding, sign):
    a = angle_grid(720, dtype=torch.float64)
    theta = torch.remainder((sign * winding * a + 0.7) / 2, math.pi)
    fit = exp.orientation_fit(a, theta)
    assert fit["winding"] == sign * winding
    assert fit["mean_error_deg"] < 1e-6
    noisy = torch.remainder(theta + 0.05 * torch.randn(720, dtype=torch.float64), math.pi)
    assert exp.orientation_fit(a, noisy)["mean_error_deg"] < 5


@pytest.mark.slow
def test_circle_quick_run(tmp_path):
    flat = run_quick("circle", tmp_path)
    # learning: far better than the mean patch and the untrained model; orientation encoded
    assert flat["test_recon_mse"] < 0.2 * flat["mean_patch_mse"]
    assert flat["test_recon_mse"] < 0.1 * flat["untrained_recon_mse"]
    assert flat["test_log_lik"] > flat["untrained_test_log_lik"] + 100
    assert abs(flat["winding_number"]) in (1, 2)
    assert flat["test_orientation_error_deg"] < 15
    assert flat["sweep_template_corr"] > 0.9
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quick"] is True and config["config"]["epochs"] >= 1
    assert "| model |" in (tmp_path / "results.md").read_text()
    pytest.importorskip("matplotlib")
    for name in ("sweep.png", "orientation.png"):
        assert (tmp_path / name).stat().st_size > 0
