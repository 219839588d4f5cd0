"""The image generator model, the digits metrics and the ``images`` experiment's quick run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_quick
from torch import distributions as dist

import fastamort
from fastamort.baselines import GaussianEncoder, encoder_for
from fastamort.models import is_expfam
from fastamort.models.image_generator import MLPGenerator


# ------------------------------------------------------------------------------ model
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_dtype_and_protocol(likelihood):
    torch.manual_seed(0)
    gen = MLPGenerator(12, 3, hidden=(16,), likelihood=likelihood)
    z, x = gen.sample(5)
    assert z.shape == (5, 3) and x.shape == (5, 12)
    assert z.dtype == x.dtype == torch.float32
    assert is_expfam(gen)
    lj = gen.log_joint(z, x)
    assert lj.shape == (5,) and torch.isfinite(lj).all()
    p = 12 if likelihood == "bernoulli" else 24
    assert gen.sufficient_stats(x).shape == (5, p) and gen.natural_params(z).shape == (5, p)
    assert gen.log_normaliser(z).shape == (5,) and gen.log_prior(z).shape == (5,)
    # images (n, H, W) are flattened
    torch.testing.assert_close(gen.log_joint(z, x.reshape(5, 3, 4)), lj)
    g64 = gen.double()
    z64, x64 = g64.sample(4)
    assert z64.dtype == x64.dtype == g64.log_joint(z64, x64).dtype == torch.float64
    assert isinstance(encoder_for(gen), GaussianEncoder)


def test_bernoulli_log_joint_matches_torch_distributions():
    torch.manual_seed(1)
    gen = MLPGenerator(10, 4, hidden=(8, 8), likelihood="bernoulli").double()
    z, x = gen.sample(6)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    logits = gen.net(z)
    log_lik = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    ref = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + log_lik
    torch.testing.assert_close(gen.log_joint(z, x), ref)
    torch.testing.assert_close(gen.mean(z), torch.sigmoid(logits))


@pytest.mark.parametrize("noise", ["shared", "per_pixel"])
def test_gaussian_log_joint_matches_torch_distributions(noise):
    torch.manual_seed(2)
    gen = MLPGenerator(7, 2, hidden=(5,), likelihood="gaussian", noise=noise, init_std=0.4)
    gen = gen.double()
    with torch.no_grad():
        gen.likelihood.log_std.add_(0.1 * torch.randn_like(gen.likelihood.log_std))
    z, x = gen.sample(9)
    mu = torch.sigmoid(gen.net(z))
    std = gen.likelihood.log_std.exp()
    ref = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(mu, std).log_prob(x).sum(-1)
    torch.testing.assert_close(gen.log_joint(z, x), ref)
    assert gen.likelihood.log_std.shape == ((7,) if noise == "per_pixel" else ())


def test_sampling_statistics_match_the_model():
    torch.manual_seed(3)
    gen = MLPGenerator(6, 2, hidden=(8,), likelihood="gaussian", init_std=0.2).double()
    z, x = gen.sample(100_000)
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(2, dtype=torch.float64), atol=0.02, rtol=0)
    with torch.no_grad():
        resid = x - gen.mean(z)
    torch.testing.assert_close(resid.std(), torch.tensor(0.2, dtype=torch.float64), atol=0.003,
                               rtol=0)  # fmt: skip
    torch.manual_seed(4)
    gb = MLPGenerator(6, 2, hidden=(8,), likelihood="bernoulli").double()
    z, x = gb.sample(100_000)
    with torch.no_grad():
        p = gb.mean(z).mean(0)
    torch.testing.assert_close(x.mean(0), p, atol=0.01, rtol=0)


def test_gradients_reach_the_parameters_and_amortised_step_runs():
    torch.manual_seed(5)
    gen = MLPGenerator(16, 2, hidden=(8,), likelihood="gaussian")
    z, x = gen.sample(4)
    gen.log_joint(z, x).sum().backward()
    assert all(p.grad is not None for p in gen.parameters())
    learner = fastamort.AmortisedLearner(gen, n_sleep=50, n_held_out=10)
    assert learner.estimator == "expfam"
    rec = learner.step(x)
    assert math.isfinite(rec["objective"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs_dim": 0}, "obs_dim"),
        ({"hidden": (8, 0)}, "hidden"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"noise": "diag"}, "noise"),
        ({"init_std": -1.0}, "init_std"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"obs_dim": 4, "latent_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLPGenerator(args.pop("obs_dim"), args.pop("latent_dim"), **args)


def test_bad_inputs_raise():
    gen = MLPGenerator(4, 2, hidden=(3,))
    with pytest.raises(TypeError, match="hidden"):
        MLPGenerator(4, 2, hidden=8)
    with pytest.raises(TypeError, match="latent_dim"):
        MLPGenerator(4, 2.5)
    with pytest.raises(ValueError, match="z"):
        gen.log_joint(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="x"):
        gen.log_joint(torch.zeros(3, 2), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="n"):
        gen.sample(-1)


# ------------------------------------------------------------------------------ metrics
def test_frechet_distance_against_scipy_and_kid_properties():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    from fastamort.experiments._digits import frechet_distance, kernel_inception_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    b = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(
        ca + cb - 2 * np.real(scipy_linalg.sqrtm(ca @ cb))
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # unbiased MMD²: explicit double sums on a tiny set
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 1

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    kxx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    kyy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    kxy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert kernel_inception_distance(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    assert kernel_inception_distance(a, b) > 10 * abs(kernel_inception_distance(a[:200], a[200:]))


def test_digits_split_is_fixed_and_in_range():
    pytest.importorskip("sklearn")
    from fastamort.experiments._digits import load_digits_split

    s1, s2 = load_digits_split(500, 0), load_digits_split(500, 0)
    assert s1.binary_train.shape == (1297, 64) and s1.continuous_test.shape == (500, 64)
    assert torch.equal(s1.continuous_train, s2.continuous_train)
    assert set(s1.binary_test.unique().tolist()) == {0.0, 1.0}
    assert 0 < float(s1.continuous_train.min()) and float(s1.continuous_train.max()) < 1
    with pytest.raises(ValueError, match="n_test"):
        load_digits_split(0, 0)


# ------------------------------------------------------------------------------ quick run
@pytest.mark.slow
def test_images_quick_run(tmp_path):
    pytest.importorskip("sklearn")
    flat = run_quick("images", tmp_path)
    for variant in ("binary", "continuous"):
        assert f"{variant}_data_fid" in flat
        for method in ("amortised", "vae", "iwae", "rws"):
            for stat in ("fid", "kid", "test_ll", "fid_std"):
                assert f"{variant}_{method}_{stat}" in flat
    assert flat["classifier_accuracy"] > 0.85
    # learning works: every method's samples get much closer to the test set than at the
    # (shared) initialisation, and far from the data floor at the start
    for variant in ("binary", "continuous"):
        for method in ("amortised", "vae", "rws"):
            key = f"{variant}_{method}"
            assert flat[f"{key}_fid"] < 0.7 * flat[f"{key}_fid_init"], (key, flat)
        assert flat[f"{variant}_data_fid"] < 0.1 * flat[f"{variant}_amortised_fid_init"]
    assert "| method |" in (tmp_path / "results.md").read_text()
    pytest.importorskip("matplotlib")
    for name in ("samples_binary.png", "samples_continuous.png", "fid_vs_epoch.png"):
        assert (tmp_path / name).exists()
