"""LaplaceICA (Laplace sources, linear mixing, Gaussian noise) and the ``ica`` experiment."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_quick

from fastamort.experiments import ica as exp
from fastamort.models.base import check_model, is_expfam
from fastamort.models.ica import LaplaceICA, laplace_ica_log_likelihood


def _model(dtype=torch.float64, **kw) -> LaplaceICA:
    torch.manual_seed(0)
    return LaplaceICA(5, 3, **kw).to(dtype)


def test_protocol_shapes_and_dtype():
    for dtype in (torch.float32, torch.float64):
        model = _model(dtype)
        check_model(model)
        assert is_expfam(model)
        assert model.obs_dim == 5 and model.n_sources == model.latent_dim == 3
        torch.manual_seed(1)
        s, x = model.sample(8)
        assert s.shape == (8, 3) and x.shape == (8, 5)
        assert s.dtype == x.dtype == dtype
        lj = model.log_joint(s, x)
        assert lj.shape == (8,) and lj.dtype == dtype
        assert model.unmix(x).shape == (8, 3)


def test_sampling_statistics_match_the_model():
    model = _model(init_std=0.5)
    torch.manual_seed(2)
    s, x = model.sample(200000)
    # Laplace(0, 1): mean 0, E|s| = 1, variance 2
    assert s.mean(0).abs().max() < 0.01
    assert (s.abs().mean(0) - 1).abs().max() < 0.01
    assert (s.var(0) - 2).abs().max() < 0.04
    a = model.mixing
    cov = 2 * a @ a.T + 0.25 * torch.eye(5, dtype=a.dtype)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.05 * float(cov.abs().max()))


def test_log_joint_matches_torch_distributions():
    model = _model(init_std=0.6)
    torch.manual_seed(3)
    s, x = model.sample(6)
    with torch.no_grad():
        std = model.likelihood.std()
        assert float(std) == pytest.approx(0.6, rel=1e-6)
        one = torch.tensor(1.0, dtype=torch.float64)
        ref = torch.distributions.Laplace(0 * one, one).log_prob(s).sum(-1)
        ref = ref + torch.distributions.Normal(s @ model.weight.T, std).log_prob(x).sum(-1)
    assert torch.allclose(model.log_joint(s, x), ref, rtol=1e-10, atol=1e-10)


def test_noise_floor():
    model = LaplaceICA(3, 3, init_std=0.5, min_std=0.2).double()
    assert model.noise_std == pytest.approx(0.5, rel=1e-6)
    with torch.no_grad():
        model.likelihood.log_std.fill_(-30.0)
    assert model.noise_std == pytest.approx(0.2, rel=1e-9)
    torch.manual_seed(4)
    with torch.no_grad():
        s = model.sample_latent(100000)
        x = model.likelihood.sample(model.mean(s))
        assert float((x - model.mean(s)).std()) == pytest.approx(0.2, rel=0.01)


def test_noiseless_log_likelihood_by_change_of_variables():
    # one dimension: x = a s has density Laplace(0, |a|)
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None]
    a = torch.tensor([[-1.7]], dtype=torch.float64)
    scale = torch.tensor(1.7, dtype=torch.float64)
    ref = torch.distributions.Laplace(0 * scale, scale).log_prob(x[:, 0]).mean()
    assert float(laplace_ica_log_likelihood(a, x)) == pytest.approx(float(ref), abs=1e-12)
    # independent scaled coordinates: the product of Laplace(0, |a_i|)
    torch.manual_seed(5)
    x2 = torch.randn(7, 2, dtype=torch.float64)
    a2 = torch.diag(torch.tensor([0.5, 3.0], dtype=torch.float64))
    scales = torch.tensor([0.5, 3.0], dtype=torch.float64)
    ref2 = torch.distributions.Laplace(0 * scales, scales).log_prob(x2).sum(-1).mean()
    model = LaplaceICA(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(a2)
    assert float(model.noiseless_log_likelihood(x2)) == pytest.approx(float(ref2), abs=1e-12)
    with pytest.raises(ValueError, match="square"):
        LaplaceICA(3, 2).noiseless_log_likelihood(torch.zeros(2, 3))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"obs_dim": 0, "n_sources": 2}, ValueError, "obs_dim"),
        ({"obs_dim": 3, "n_sources": 1.5}, TypeError, "n_sources"),
        ({"obs_dim": 3, "n_sources": 2, "init_std": -1.0}, ValueError, "init_std"),
        ({"obs_dim": 3, "n_sources": 2, "init_std": "1"}, TypeError, "init_std"),
        ({"obs_dim": 3, "n_sources": 2, "weight_scale": 0.0}, ValueError, "weight_scale"),
        ({"obs_dim": 3, "n_sources": 2, "min_std": 1.0}, ValueError, "min_std"),
        ({"obs_dim": 3, "n_sources": 2, "min_std": -0.1}, ValueError, "min_std"),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LaplaceICA(**kwargs)


def test_amari_distance():
    torch.manual_seed(6)
    a = torch.randn(4, 4, dtype=torch.float64)
    perm_scale = torch.eye(4, dtype=torch.float64)[[2, 0, 3, 1]] * torch.tensor(
        [2.0, -0.5, 3.0, 1.0], dtype=torch.float64
    )
    assert exp.amari_distance(a @ perm_scale, a) == pytest.approx(0.0, abs=1e-12)
    d = exp.amari_distance(torch.randn(4, 4, dtype=torch.float64), a)
    assert 0.05 < d <= 1.0


@pytest.mark.slow
def test_ica_quick_run(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")  # the natural photographs
    flat = run_quick("ica", tmp_path)
    # learning moves the mixing matrix towards the truth and the sources towards sparsity
    assert flat["synthetic_amari_amortised"] < flat["synthetic_amari_init"] - 0.1
    assert flat["synthetic_amari_fastica"] < 0.1
    assert flat["images_amortised_kurtosis"] > flat["images_init_kurtosis"] + 0.3
    assert flat["images_amortised_kurtosis"] > flat["images_pca_kurtosis"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quick"] is True
    assert "| method |" in (tmp_path / "results.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "filters.png").stat().st_size > 0


def test_refine_lengthscale_is_the_scaled_median_heuristic():
    """``syn_refine_lengthscale_scale`` multiplies the median heuristic of the same sleep set."""
    from dataclasses import replace

    from fastamort.kernels import Gaussian

    model = _model()
    lengthscales = []
    for scale in (1.0, 2.5):
        kernel = Gaussian()
        torch.manual_seed(3)
        exp.reset_lengthscale(kernel, model, replace(exp.QUICK, syn_refine_lengthscale_scale=scale))
        lengthscales.append(float(kernel.log_lengthscale.exp()))
    assert lengthscales[1] == pytest.approx(2.5 * lengthscales[0], rel=1e-12)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_refine_lengthscale_scale_must_be_positive(scale):
    from dataclasses import replace

    cfg = replace(exp.QUICK, syn_refine_lengthscale_scale=scale, syn_refine_steps=2)
    x = torch.randn(20, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="syn_refine_lengthscale_scale"):
        exp.refine(_model(), x, cfg=cfg, seed=0, progress=False)
