"""Exponential-family helpers: η·S(x) − Ψ + log h equals torch.distributions' log-density."""

from __future__ import annotations

import torch
from torch import distributions as dist

from fastamort.likelihoods import BernoulliLikelihood, GaussianLikelihood, PoissonLikelihood


def _expfam_log_prob(lik, param, x):
    eta = lik.natural_params(param)
    return (
        (eta * lik.sufficient_stats(x)).sum(-1)
        - lik.log_normaliser(param)
        + lik.log_base_measure(x)
    )


def test_gaussian_per_dimension_and_shared():
    mean = torch.randn(6, 4, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    for lik in (GaussianLikelihood(4, init_std=0.7), GaussianLikelihood(None, init_std=1.3)):
        lik = lik.double()
        with torch.no_grad():
            if lik.log_std.ndim:
                lik.log_std.copy_(torch.linspace(-0.5, 0.5, 4))
        ref = dist.Normal(mean, lik.log_std.exp()).log_prob(x).sum(-1)
        torch.testing.assert_close(_expfam_log_prob(lik, mean, x), ref)


def test_bernoulli():
    logits = torch.randn(5, 3, dtype=torch.float64) * 3
    x = torch.bernoulli(torch.full((5, 3), 0.4, dtype=torch.float64))
    ref = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(_expfam_log_prob(BernoulliLikelihood(), logits, x), ref)


def test_poisson_has_the_right_log_normaliser_sign():
    log_rate = torch.randn(5, 3, dtype=torch.float64)
    x = torch.poisson(torch.full((5, 3), 2.0, dtype=torch.float64))
    ref = dist.Poisson(log_rate.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(_expfam_log_prob(PoissonLikelihood(), log_rate, x), ref)
