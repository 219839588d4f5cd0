"""The Bernoulli NMF model (fastamort.models.nmf) and the ``nmf`` experiment."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_quick
from torch.nn import functional as F

from fastamort.experiments.nmf import laplace_log_likelihood, map_latent
from fastamort.models.base import is_expfam
from fastamort.models.nmf import BernoulliNMF


def test_shapes_dtype_and_nonnegative_weights():
    torch.manual_seed(0)
    model = BernoulliNMF(10, 3).double()
    u, x = model.sample(7)
    assert u.shape == (7, 3) and x.shape == (7, 10)
    assert u.dtype == x.dtype == torch.float64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert bool((model.weight() >= 0).all())
    assert model.latent_dim == 3 and is_expfam(model)
    for out in (model.log_joint(u, x), model.log_prior(u), model.log_normaliser(u)):
        assert out.shape == (7,) and out.dtype == torch.float64
    assert model.natural_params(u).shape == (7, 10)


def test_latent_is_logit_of_a_uniform():
    torch.manual_seed(1)
    z = torch.sigmoid(BernoulliNMF(4, 2).sample_latent(200_000))
    assert abs(float(z.mean()) - 0.5) < 0.005
    assert abs(float(z.var()) - 1 / 12) < 0.002
    assert abs(float((z < 0.1).float().mean()) - 0.1) < 0.005


def test_log_joint_against_torch_distributions():
    torch.manual_seed(2)
    model = BernoulliNMF(6, 3).double()
    with torch.no_grad():
        model.bias.normal_()
    u, x = model.sample(5)
    w = F.softplus(model.raw_weight)
    # p(x|u) Bernoulli with logits W u + b; u standard logistic = logit of U(0, 1)
    lik = torch.distributions.Bernoulli(logits=u @ w.T + model.bias).log_prob(x).sum(-1)
    logistic = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(torch.zeros(3, dtype=torch.float64), 1.0),
        [torch.distributions.SigmoidTransform().inv],
    )
    prior = logistic.log_prob(u).sum(-1)
    torch.testing.assert_close(model.log_joint(u, x), lik + prior)
    torch.testing.assert_close(model.log_likelihood_given(u, x), lik)


def test_sample_mean_matches_model_mean():
    torch.manual_seed(3)
    model = BernoulliNMF(5, 2)
    u, x = model.sample(100_000)
    torch.testing.assert_close(x.mean(0), model.mean(u).mean(0).detach(), atol=0.01, rtol=0)


def test_importance_sampling_matches_enumeration_in_one_dimension():
    torch.manual_seed(4)
    model = BernoulliNMF(4, 1).double()
    x = model.sample(3)[1]
    u_map = map_latent(model, x, 300, 0.05)
    ll, ess = laplace_log_likelihood(model, x, u_map, 20_000, 1.5)
    grid = torch.linspace(-30, 30, 200_001, dtype=torch.float64)[:, None]
    exact = []
    for xi in x:
        logp = model.log_joint(grid, xi.expand(grid.shape[0], -1)).detach()
        exact.append(torch.logsumexp(logp, 0) + math.log(float(grid[1] - grid[0])))
    torch.testing.assert_close(ll, torch.stack(exact), atol=0.01, rtol=0)
    assert bool((ess > 1000).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"obs_dim": 0, "n_factors": 2}, ValueError, "obs_dim"),
        ({"obs_dim": 4, "n_factors": -1}, ValueError, "n_factors"),
        ({"obs_dim": 4.0, "n_factors": 2}, TypeError, "obs_dim"),
        ({"obs_dim": 4, "n_factors": 2, "init_weight": 0.0}, ValueError, "init_weight"),
        ({"obs_dim": 4, "n_factors": 2, "init_bias": float("nan")}, ValueError, "init_bias"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        BernoulliNMF(**kwargs)


@pytest.mark.slow
def test_nmf_quick_run(tmp_path):
    flat = run_quick("nmf", tmp_path)
    for name in ("config.json", "results.md"):
        assert (tmp_path / name).stat().st_size > 100
    # learning works: the trained model beats its initialisation and the pixel means
    assert flat["al_recon_mse"] < 0.7 * flat["untrained_recon_mse"]
    assert flat["al_test_loglik"] > flat["untrained_test_loglik"] + 5.0
    assert flat["al_recon_mse"] < flat["pixel_mean_recon_mse"]
    assert flat["vae_long_recon_mse"] < flat["pixel_mean_recon_mse"]
    pytest.importorskip("matplotlib")
    for name in ("factors.png", "examples.png", "mse_histograms.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_nmf_runs_with_the_learned_feature_kernel(tmp_path):
    """``features="linear-bn"``: the amortised learner's kernel is Gaussian on learned
    Linear + BatchNorm features (recorded in config.json); a tiny budget, end to end."""
    import json

    from fastamort.experiments import nmf, run_experiment

    cfg = nmf.Config(
        epochs=1, n_sleep=120, n_held_out=30, vae_long_factor=1, map_steps=5, is_samples=20
    )
    flat = nmf.run(
        out=tmp_path, device=torch.device("cpu"), progress=False, config=cfg,
        features="linear-bn",
    )  # fmt: skip
    assert all(math.isfinite(v) for v in flat.values())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["features"] == "linear-bn"
    assert "learned Linear(64 → 64) + BatchNorm" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="features: expected one of none, linear-bn"):
        run_experiment("nmf", quick=True, out=tmp_path, features="mlp", progress=False)
    with pytest.raises(ValueError, match="experiment 'hierarchical' has no features option"):
        run_experiment("hierarchical", quick=True, out=tmp_path, features="linear-bn")


def test_config_overrides_from_the_command_line(tmp_path, capsys):
    from fastamort.experiments import main, parse_overrides, run_experiment

    assert parse_overrides(["epochs=3", "lam=None", "name=evidence", "sizes=(1, 2)"]) == {
        "epochs": 3, "lam": None, "name": "evidence", "sizes": (1, 2),
    }  # fmt: skip
    with pytest.raises(ValueError, match="--set: expected NAME=VALUE"):
        parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="'nmf' has no configuration field epoch "):
        run_experiment("nmf", quick=True, out=tmp_path, overrides={"epoch": 1})
    assert main(["nmf", "--quick", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "has no configuration field nope" in capsys.readouterr().err
