"""The hierarchical mixture (fastamort.models.hierarchical) and the ``hierarchical`` experiment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_quick

from fastamort.experiments.hierarchical import MixtureEncoder, mixture_elbo, pinwheel
from fastamort.models.base import is_expfam
from fastamort.models.hierarchical import HierarchicalMixture


def test_shapes_and_dtype():
    torch.manual_seed(0)
    model = HierarchicalMixture(3, 4, latent_dim=2, hidden=5).double()
    (c, z), x = model.sample(9)
    assert c.shape == (9,) and c.dtype == torch.long and bool((c >= 0).all() & (c < 4).all())
    assert z.shape == (9, 2) and x.shape == (9, 3)
    assert z.dtype == x.dtype == torch.float64
    assert is_expfam(model)
    for out in (model.log_joint((c, z), x), model.log_prior((c, z)),
                model.log_normaliser((c, z))):  # fmt: skip
        assert out.shape == (9,) and out.dtype == torch.float64
    assert model.natural_params((c, z)).shape == (9, 6)
    assert model.cluster_log_likelihoods(x, 50).shape == (9, 4)
    with pytest.raises(TypeError, match="tuple"):
        model.log_prior(z)


def test_log_joint_against_torch_distributions():
    torch.manual_seed(1)
    model = HierarchicalMixture(2, 3).double()
    with torch.no_grad():
        model.raw_scale_tril.add_(0.3 * torch.randn_like(model.raw_scale_tril))
        model.logits.normal_()
    (c, z), x = model.sample(6)
    pi = torch.distributions.Categorical(logits=model.logits)
    mvn = torch.distributions.MultivariateNormal(
        model.means[c], covariance_matrix=model.scale_tril()[c] @ model.scale_tril()[c].mT
    )
    obs = torch.distributions.Normal(model.decode(z), model.std())
    expected = pi.log_prob(c) + mvn.log_prob(z) + obs.log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_joint((c, z), x), expected)


def test_sampling_statistics():
    torch.manual_seed(2)
    model = HierarchicalMixture(2, 3)
    with torch.no_grad():
        model.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    (c, z), x = model.sample(200_000)
    freq = torch.bincount(c, minlength=3).float() / c.numel()
    torch.testing.assert_close(freq, model.mixing_weights().detach(), atol=0.005, rtol=0)
    zc = z[c == 1]
    torch.testing.assert_close(zc.mean(0), model.means[1].detach(), atol=0.01, rtol=0)
    cov = model.scale_tril()[1] @ model.scale_tril()[1].T
    torch.testing.assert_close(torch.cov(zc.T), cov.detach(), atol=0.01, rtol=0)
    resid = x - model.decode(z).detach()
    torch.testing.assert_close(resid.std(0), model.std().detach(), atol=0.005, rtol=0)


def test_importance_sampled_likelihood_against_quadrature():
    torch.manual_seed(3)
    model = HierarchicalMixture(2, 2, init_std=0.6).double()
    x = model.sample(4)[1]
    ll = model.log_likelihood(x, 100_000)
    g = torch.linspace(-6, 6, 601, dtype=torch.float64)
    zz = torch.cartesian_prod(g, g)
    area = float(g[1] - g[0]) ** 2
    exact = []
    for xi in x:
        terms = [model.log_joint((torch.full((zz.shape[0],), k), zz), xi.expand(len(zz), -1))
                 for k in range(2)]  # fmt: skip
        exact.append(torch.logsumexp(torch.cat(terms).detach(), 0) + math.log(area))
    torch.testing.assert_close(ll, torch.stack(exact), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"obs_dim": 0}, ValueError, "obs_dim"),
        ({"n_clusters": 2.5}, TypeError, "n_clusters"),
        ({"latent_dim": 0}, ValueError, "latent_dim"),
        ({"hidden": -3}, ValueError, "hidden"),
        ({"init_std": 0.0}, ValueError, "init_std"),
        ({"init_std": 0.01, "min_std": 0.1}, ValueError, "init_std"),
        ({"min_std": -1.0}, ValueError, "min_std"),
        ({"init_scale": float("inf")}, ValueError, "init_scale"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        HierarchicalMixture(**kwargs)


def test_pinwheel_is_seeded_and_shaped():
    x, y = pinwheel(50, n_arms=4, seed=3)
    x2, y2 = pinwheel(50, n_arms=4, seed=3)
    assert x.shape == (200, 2) and y.shape == (200,)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.bincount(y).tolist() == [50] * 4
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 1.0) < 0.1
    with pytest.raises(ValueError, match="n_per_arm"):
        pinwheel(0)


def test_vae_elbo_is_a_lower_bound_and_differentiable():
    torch.manual_seed(5)
    model = HierarchicalMixture(2, 3, init_std=0.5).double()
    encoder = MixtureEncoder(2, 3, 2, hidden=8).double()
    x = model.sample(64)[1]
    elbo = mixture_elbo(model, encoder, x)
    assert elbo.shape == (64,) and bool(torch.isfinite(elbo).all())
    loglik = model.log_likelihood(x, 20_000)
    assert float(elbo.detach().mean()) < float(loglik.mean())
    elbo.mean().backward()
    assert model.means.grad is not None and encoder.net[0].weight.grad is not None


@pytest.mark.slow
def test_hierarchical_quick_run(tmp_path):
    flat = run_quick("hierarchical", tmp_path)
    for name in ("config.json", "results.md"):
        assert (tmp_path / name).stat().st_size > 100
    # learning works: the held-out log-likelihood rises far above the untrained model's
    assert flat["al_test_loglik"] > flat["untrained_test_loglik"] + 1.0
    assert 0.0 <= flat["al_ari"] <= 1.0
    pytest.importorskip("matplotlib")
    for name in ("clusters.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 1000
