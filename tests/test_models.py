"""Ready-made models: log joints, exact likelihoods and sampling statistics."""

from __future__ import annotations

import math

import torch
from torch import distributions as dist

from fastamort.models import CircleModel, FactorAnalysis, GaussianMixture, is_expfam


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
