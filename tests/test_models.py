"""Ready-made models: log joints, exact likelihoods and sampling statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as dist

from fastamort.models import (
    BernoulliNMF,
    CircleGenerator,
    CircleModel,
    FactorAnalysis,
    GaussianMixture,
    HierarchicalMixture,
    HodgkinHuxley,
    LaplaceICA,
    LatentOscillator,
    MLPGenerator,
    NeuralProcess,
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


# every model the package exports, with small sizes
ALL_MODELS = {
    **MODELS,
    "circle-image": lambda: CircleGenerator(16, hidden=(8,)),
    "hodgkin-huxley": lambda: HodgkinHuxley(torch.ones(40)),
    "mlp-bernoulli": lambda: MLPGenerator(6, 2, hidden=(8,)),
    "mlp-gaussian": lambda: MLPGenerator(6, 2, hidden=(8,), likelihood="gaussian"),
    "neural-process": lambda: NeuralProcess(h_dim=8, r_dim=8, z_dim=4).condition(
        torch.randn(1, 3, 1), torch.randn(1, 3, 1), torch.randn(1, 4, 1)
    ),
}


def test_every_exported_model_is_covered():
    import fastamort.models as m

    exported = {n for n in m.__all__ if isinstance(getattr(m, n), type)}
    covered = {type(make()).__name__ for make in ALL_MODELS.values()}
    bases = {"ExpFamModel", "GaussianObservationModel", "GenerativeModel", "NeuralProcess"}
    assert exported - bases <= covered, exported - bases - covered


@pytest.mark.parametrize("make", ALL_MODELS.values(), ids=ALL_MODELS.keys())
def test_no_samples_give_an_empty_log_joint(make):
    torch.manual_seed(0)
    model = make()
    z, x = model.sample(0)
    assert x.shape[0] == 0
    out = model.log_joint(z, x)
    assert out.shape == (0,)
    if is_expfam(model):
        assert model.sufficient_stats(x).shape[0] == 0
        assert model.natural_params(z).shape == model.sufficient_stats(x).shape
        assert model.log_normaliser(z).shape == (0,) and model.log_prior(z).shape == (0,)
    z1, x1 = model.sample(1)
    assert x1.shape[1:] == x.shape[1:] and model.log_joint(z1, x1).shape == (1,)


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


def test_neural_process_errors_name_the_argument():
    net = NeuralProcess(x_dim=1, y_dim=2, h_dim=8, r_dim=8, z_dim=4)
    xc, yc, xt = torch.randn(1, 3, 1), torch.randn(1, 3, 2), torch.randn(1, 4, 1)
    yt = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match=r"^y_context: expected shape \(1, 3, 2\)"):
        net.condition(xc, yc[:, :2], xt)
    with pytest.raises(ValueError, match=r"^y_context: expected shape \(1, 3, 2\)"):
        net.condition(xc, yc[..., :1], xt)
    with pytest.raises(ValueError, match=r"^x_context: expected shape \(B, points, 1\)"):
        net.condition(torch.randn(1, 3, 2), yc, xt)
    with pytest.raises(ValueError, match=r"^x_target: expected shape \(B, points, 1\)"):
        net.condition(xc, yc, torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match=r"^y_target: expected shape \(1, 4, 2\)"):
        net.elbo(xc, yc, xt, yt[:, :3])
    with pytest.raises(ValueError, match=r"^y_context: expected shape"):
        net.predictive_log_likelihood(xc, yc[:, :1], xt, yt)
    with pytest.raises(ValueError, match=r"^x_target: expected shape"):
        net.predict(xc, yc, xt[0])
