"""Ready-made models: log joints, exact likelihoods and sampling statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as dist

from fastamort.models import (
    BernoulliNMF,
    CircleModel,
    FactorAnalysis,
    GaussianMixture,
    HierarchicalMixture,
    LaplaceICA,
    LatentOscillator,
    is_expfam,
)

MODELS = {
    "factor-analysis": lambda: FactorAnalysis(3, 1),
    "mixture": lambda: GaussianMixture(2, 3),
    "circle": lambda: CircleModel(4),
    "nmf": lambda: BernoulliNMF(5, 2),
    "ica": lambda: LaplaceICA(3, 2),
    "oscillator": lambda: LatentOscillator(5, 4),
    "hierarchical": lambda: HierarchicalMixture(),
}


def test_factor_analysis_log_joint_and_marginal():
    torch.manual_seed(0)
    fa = FactorAnalysis(4, 2).double()
    z, x = fa.sample(7)
    assert z.shape == (7, 2) and x.shape == (7, 4) and is_expfam(fa)
    std = fa.likelihood.log_std.exp()
    ref = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(fa.mean(z), std).log_prob(x).sum(
        -1
    )
    torch.testing.assert_close(fa.log_joint(z, x), ref)
    cov = fa.weight @ fa.weight.T + torch.diag(std**2)
    ref_ll = dist.MultivariateNormal(fa.bias, cov).log_prob(x).mean()
    torch.testing.assert_close(fa.exact_log_likelihood(x), ref_ll)


def test_factor_analysis_samples_have_the_model_covariance():
    torch.manual_seed(1)
    fa = FactorAnalysis(3, 1).double()
    x = fa.sample(200_000)[1]
    cov = fa.weight @ fa.weight.T + torch.diag(fa.likelihood.variance())
    torch.testing.assert_close(torch.cov(x.T), cov.detach(), atol=0.05, rtol=0.05)


def test_mixture_exact_likelihood_by_enumeration():
    torch.manual_seed(2)
    gmm = GaussianMixture(2, 3).double()
    x = gmm.sample(5)[1]
    comps = dist.Independent(dist.Normal(gmm.means, gmm.likelihood.log_std.exp()), 1)
    mix = dist.MixtureSameFamily(dist.Categorical(logits=gmm.logits), comps)
    torch.testing.assert_close(gmm.exact_log_likelihood(x), mix.log_prob(x).mean())
    z = torch.tensor([0, 2, 1])
    ref = torch.log_softmax(gmm.logits, 0)[z] + comps.log_prob(x[:3, None, :])[torch.arange(3), z]
    torch.testing.assert_close(gmm.log_joint(z, x[:3]), ref)


def test_circle_quadrature_is_converged_and_latents_on_the_circle():
    torch.manual_seed(3)
    c = CircleModel(3, init_std=0.4).double()
    z, x = c.sample(10)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(c.exact_log_likelihood(x, 720), c.exact_log_likelihood(x, 4000))
    assert float(c.log_prior(z)[0]) == -math.log(2 * math.pi)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_sample_count_and_log_joint_rows_are_checked(make):
    torch.manual_seed(0)
    model = make()
    for bad, error in ((-1, ValueError), (2.0, TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(error, match=r"^n: expected an integer"):
            model.sample(bad)
    z, x = model.sample(np.int64(4))
    assert x.shape[0] == 4 and model.log_joint(z, x).shape == (4,)
    with pytest.raises(ValueError, match=r"^x: 1 observations .* for 4 latents"):
        model.log_joint(z, x[:1])  # once broadcast silently to 4 wrong values
    with pytest.raises(ValueError, match=r"^x: 3 observations .* for 4 latents"):
        model.log_joint(z, x[:3])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FactorAnalysis(0, 1), "obs_dim: expected an integer >= 1"),
        (lambda: FactorAnalysis(3, -1), "latent_dim: expected an integer >= 1"),
        (lambda: FactorAnalysis(3.0, 1), "obs_dim: expected an integer"),
        (lambda: FactorAnalysis(3, 1, init_std=0.0), "init_std: expected a positive"),
        (lambda: FactorAnalysis(3, 1, weight_scale=float("nan")), "weight_scale: expected"),
        (lambda: GaussianMixture(2, 0), "n_components: expected an integer >= 1"),
        (lambda: GaussianMixture(2, 3, mean_scale=float("inf")), "mean_scale: expected"),
        (lambda: GaussianMixture(2, 3, init_std=-1.0), "init_std: expected a positive"),
        (lambda: CircleModel(True), "obs_dim: expected an integer"),
    ],
)
def test_constructors_name_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
