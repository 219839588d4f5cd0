"""VAE, IWAE and RWS losses against exact log-likelihoods and independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import cosine_similarity

from fastamort.baselines import (
    BaselineLearner,
    CategoricalEncoder,
    GaussianEncoder,
    elbo,
    encoder_for,
    importance_weights,
    iwae_bound,
    iwae_loss,
    rws_losses,
    vae_loss,
)
from fastamort.models import FactorAnalysis, GaussianMixture, HierarchicalMixture
from fastamort.ops.standard_normal import torch_stream


def _fa(seed, obs_dim=3, latent_dim=1, n=4):
    torch.manual_seed(seed)
    x = FactorAnalysis(obs_dim, latent_dim).double().sample(n)[1]
    return FactorAnalysis(obs_dim, latent_dim).double(), x


def _per_datum_log_likelihood(model, x):
    return model.marginal().log_prob(x).detach()


def _grad(model, objective):
    return torch.cat([g.flatten() for g in torch.autograd.grad(objective, model.parameters())])


def _exact_posterior_encoder(model):
    """Affine Gaussian encoder equal to p(z|x) of a 1-latent factor analysis."""
    w = model.weight.detach()  # (D, 1)
    psi_inv = 1.0 / model.likelihood.variance().detach()  # (D,)
    sigma = 1.0 / (1.0 + (w[:, 0] ** 2 * psi_inv).sum())  # posterior variance (scalar)
    a = sigma * (w[:, 0] * psi_inv)  # mean = a·(x − b)
    enc = GaussianEncoder(model.obs_dim, 1, hidden=()).double()
    with torch.no_grad():
        lin = enc.net[0]
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0] = a
        lin.bias[0] = -(a * model.bias.detach()).sum()
        lin.bias[1] = 0.5 * math.log(float(sigma))
    return enc


def test_exact_posterior_encoder_makes_elbo_and_iwae_equal_log_likelihood():
    model, x = _fa(0)
    enc = _exact_posterior_encoder(model)
    log_px = _per_datum_log_likelihood(model, x)
    # with q = p(z|x) every log-weight equals log p(x): no bound gap, no variance
    torch.testing.assert_close(elbo(model, enc, x, n_samples=7).detach(), log_px)
    torch.testing.assert_close(iwae_bound(model, enc, x, k=5).detach(), log_px)


def test_elbo_is_below_log_likelihood_for_an_imperfect_encoder():
    model, x = _fa(1, obs_dim=4, latent_dim=2, n=6)
    enc = encoder_for(model)  # untrained: q = N(0, I), the prior
    torch.manual_seed(0)
    bound = elbo(model, enc, x, n_samples=20000).detach()
    gap = _per_datum_log_likelihood(model, x) - bound
    assert bool((gap > 0.05).all()), gap


def test_iwae_bound_increases_with_k_towards_log_likelihood():
    model, x = _fa(2, obs_dim=4, latent_dim=2, n=5)
    enc = encoder_for(model)
    log_px = float(_per_datum_log_likelihood(model, x).mean())
    torch.manual_seed(0)
    means, ses = {}, {}
    for k in (1, 5, 50):
        reps = torch.stack(
            [iwae_bound(model, enc, x, k=k, n_estimates=50).mean().detach() for _ in range(20)]
        )
        means[k], ses[k] = float(reps.mean()), float(reps.std() / math.sqrt(len(reps)))
    assert means[1] + 3 * ses[1] < means[5], means
    assert means[5] + 3 * ses[5] < means[50], means
    assert means[50] < log_px + 3 * ses[50], (means, log_px)
    # and it converges: a missing "− log k" or a pooled log-mean-exp would break this
    big = float(iwae_bound(model, enc, x, k=20000).mean().detach())
    assert abs(big - log_px) < 0.05, (big, log_px)


def _gmm_with_exact_posterior_encoder(seed):
    torch.manual_seed(seed)
    x = GaussianMixture(2, 3).double().sample(6)[1]
    model = GaussianMixture(2, 3).double()
    with torch.no_grad():
        model.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    enc = CategoricalEncoder(2, 3, hidden=()).double()
    var = float(model.likelihood.variance().detach())
    mu, log_pi = model.means.detach(), torch.log_softmax(model.logits.detach(), 0)
    with torch.no_grad():  # posterior logits are affine in x for an isotropic mixture
        enc.net[0].weight.copy_(mu / var)
        enc.net[0].bias.copy_(log_pi - 0.5 * (mu * mu).sum(1) / var)
    return model, enc, x


def test_categorical_elbo_is_the_exact_sum_over_components():
    model, enc, x = _gmm_with_exact_posterior_encoder(3)
    log_px = torch.logsumexp(
        torch.stack([model.log_joint(torch.full((6,), j), x) for j in range(3)]), 0
    ).detach()
    torch.testing.assert_close(elbo(model, enc, x).detach(), log_px)
    # an imperfect encoder: the ELBO is Σ_k q_k (log p(k, x) − log q_k), below log p(x)
    with torch.no_grad():
        enc.net[0].bias.add_(torch.tensor([1.0, 0.0, -1.0]))
    logq = enc(x).detach()
    by_hand = sum(
        logq[:, j].exp() * (model.log_joint(torch.full((6,), j), x).detach() - logq[:, j])
        for j in range(3)
    )
    got = elbo(model, enc, x).detach()
    torch.testing.assert_close(got, by_hand)
    assert bool((got < log_px).all())


def test_vimco_encoder_gradient_is_unbiased():
    """Mean VIMCO φ-gradient (many estimates) = exact ∇φ E[IWAE-2 bound] by enumeration."""
    torch.manual_seed(4)
    model = GaussianMixture(2, 3).double()
    x = model.sample(1)[1]
    enc = CategoricalEncoder(2, 3, hidden=()).double()
    with torch.no_grad():
        enc.net[0].bias.copy_(torch.tensor([0.4, -0.3, 0.1]))
    params = list(enc.parameters())
    logq = enc(x)[0]
    logp = torch.stack([model.log_joint(torch.tensor([j]), x)[0] for j in range(3)]).detach()
    exact_bound = sum(
        torch.exp(logq[a] + logq[b])
        * torch.logsumexp(torch.stack([logp[a] - logq[a], logp[b] - logq[b]]), 0)
        for a, b in itertools.product(range(3), repeat=2)
    ) - math.log(2)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_bound, params)])
    torch.manual_seed(5)
    loss = iwae_loss(model, enc, x, k=2, n_estimates=200000)
    mc = -torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(mc, exact, atol=0.02 * float(exact.norm()), rtol=0)
    # without the score-function term the gradient is wrong: the test can tell
    assert float((exact - _pathwise_only(model, enc, x, params)).norm()) > 0.1 * float(exact.norm())


def _pathwise_only(model, enc, x, params):
    torch.manual_seed(5)
    bound = iwae_bound(model, enc, x, k=2, n_estimates=200000).mean()
    return torch.cat([g.flatten() for g in torch.autograd.grad(bound, params)])


def test_rws_theta_gradient_matches_an_independent_importance_sampler():
    model, x = _fa(6, obs_dim=3, latent_dim=1, n=2)
    enc = encoder_for(model)  # fresh: q(z|x) = N(0, 1) exactly
    torch.manual_seed(0)
    z = torch.randn(64, 2, 1, dtype=torch.float64)
    theta_loss, _ = rws_losses(model, enc, x, z=z)
    ours = -_grad(model, theta_loss)

    # reference: written from scratch with torch.distributions, one datum at a time
    normal = torch.distributions.Normal
    total = 0.0
    for b in range(2):
        zb = z[:, b]  # (64, 1)
        mean = zb @ model.weight.T + model.bias
        std = model.likelihood.log_std.exp()
        log_p = normal(mean, std).log_prob(x[b]).sum(-1) + normal(0.0, 1.0).log_prob(zb).sum(-1)
        log_q = normal(0.0, 1.0).log_prob(zb).sum(-1)
        w = torch.softmax((log_p - log_q).detach(), 0)
        total = total + (w * log_p).sum() / 2
    torch.testing.assert_close(ours, _grad(model, total), rtol=1e-10, atol=1e-12)


def test_rws_theta_gradient_converges_to_the_exact_gradient():
    model, x = _fa(7, obs_dim=3, latent_dim=1, n=10)
    enc = encoder_for(model)
    exact = _grad(model, model.exact_log_likelihood(x))
    torch.manual_seed(1)
    est = -_grad(model, rws_losses(model, enc, x, k=50000)[0])
    assert float(cosine_similarity(est, exact, dim=0)) > 0.999
    assert float((est - exact).norm() / exact.norm()) < 0.05


def test_weights_are_normalised_per_datum():
    model, _ = _fa(8, obs_dim=3, latent_dim=1)
    enc = encoder_for(model)
    x = torch.tensor([[0.0, 0.0, 0.0], [4.0, -3.0, 5.0]], dtype=torch.float64)  # far apart
    torch.manual_seed(2)
    z, log_p, log_q, w = importance_weights(model, enc, x, k=16)
    torch.testing.assert_close(w.sum(0), torch.ones(2, dtype=torch.float64))
    pooled = torch.softmax((log_p - log_q).detach().flatten(), 0).reshape(16, 2)
    assert not torch.allclose(pooled * 2, w, atol=1e-3)  # pooling would differ here

    # the batch gradient is the mean of the single-datum gradients on the same particles
    both = -_grad(model, rws_losses(model, enc, x, z=z)[0])
    one = -_grad(model, rws_losses(model, enc, x[:1], z=z[:, :1])[0])
    two = -_grad(model, rws_losses(model, enc, x[1:], z=z[:, 1:])[0])
    torch.testing.assert_close(both, (one + two) / 2)


def test_rws_phi_losses_wake_and_sleep():
    model, x = _fa(9, obs_dim=3, latent_dim=1, n=8)
    enc = encoder_for(model)
    torch.manual_seed(3)
    theta_wake, phi_wake = rws_losses(model, enc, x, k=5, insomnia=1.0)
    _, phi_sleep = rws_losses(model, enc, x, k=5, insomnia=0.0, n_sleep=300)
    for loss in (phi_wake, phi_sleep):
        grads = torch.autograd.grad(loss, list(enc.parameters()), allow_unused=True)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # the θ-loss does not reach φ, the φ-loss does not reach θ
    assert torch.autograd.grad(theta_wake, list(enc.parameters()), allow_unused=True)[0] is None
    assert all(
        g is None
        for g in torch.autograd.grad(phi_wake, list(model.parameters()), allow_unused=True)
    )


def test_baseline_learner_improves_the_likelihood_and_can_freeze_the_model():
    torch.manual_seed(10)
    data = FactorAnalysis(4, 1).double().sample(400)[1]
    for method in ("vae", "iwae", "rws"):
        torch.manual_seed(11)
        model = FactorAnalysis(4, 1).double()
        before = float(model.exact_log_likelihood(data).detach())
        learner = BaselineLearner(model, encoder_for(model), method, k=5, lr=0.03)
        history = learner.fit(data, epochs=10, batch_size=100, progress=False)
        assert len(history) == 40
        after = float(model.exact_log_likelihood(data).detach())
        assert after > before + 0.5, (method, before, after)

    model = FactorAnalysis(4, 1).double()
    enc = encoder_for(model)
    snapshot = [p.detach().clone() for p in model.parameters()]
    enc_before = [p.detach().clone() for p in enc.parameters()]
    BaselineLearner(model, enc, "rws", train_model=False, lr=0.01).fit(
        data, epochs=1, batch_size=100, progress=False
    )
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, enc.parameters(), strict=True))


def test_categorical_encoder_trains_on_a_mixture():
    torch.manual_seed(12)
    truth = GaussianMixture(2, 3, mean_scale=4.0).double()
    with torch_stream():  # the data set the tolerance below was measured on
        data = truth.sample(300)[1]
    enc = encoder_for(truth)
    learner = BaselineLearner(truth, enc, "iwae", k=5, lr=0.05, train_model=False)
    learner.fit(data, epochs=30, batch_size=100, progress=False)
    exact = -float(truth.exact_log_likelihood(data).detach())
    assert learner.history[-1]["loss"] < learner.history[0]["loss"]
    assert abs(learner.history[-1]["loss"] - exact) < 0.1


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m, e, x: iwae_bound(m, e, x, k=0), ValueError, "k: expected an integer >= 1"),
        (lambda m, e, x: rws_losses(m, e, x, k=1), ValueError, "k: expected an integer >= 2"),
        (lambda m, e, x: vae_loss(m, e, x, n_samples=0), ValueError, "n_samples"),
        (lambda m, e, x: vae_loss(m, e, x[:, :2]), ValueError, "expects 3 features"),
        (lambda m, e, x: vae_loss(m, e, x * float("nan")), ValueError, "NaN"),
        (lambda m, e, x: vae_loss(m, e, x.long()), TypeError, "floating"),
        (lambda m, e, x: vae_loss(m, "encoder", x), TypeError, "encoder"),
        (lambda m, e, x: vae_loss(object(), e, x), TypeError, "not a fastamort model"),
        (lambda m, e, x: rws_losses(m, e, x, insomnia=1.5), ValueError, "insomnia"),
        (lambda m, e, x: rws_losses(m, e, x, z=torch.zeros(4, 7, 1)), ValueError, "particles"),
        (lambda m, e, x: BaselineLearner(m, e, "gan"), ValueError, "method"),
        (lambda m, e, x: BaselineLearner(m, e).fit(x, batch_size=0), ValueError, "batch_size"),
        (lambda m, e, x: BaselineLearner(m, e).fit(x, epochs=1.5), TypeError, "epochs"),
        (lambda m, e, x: BaselineLearner(m, e, max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (lambda m, e, x: BaselineLearner(m, e, seed=None), TypeError, "seed"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    model, x = _fa(13)
    enc = encoder_for(model)
    with pytest.raises(error, match=match):
        call(model, enc, x)


def test_numpy_integer_counts_are_accepted():
    model, x = _fa(13)
    enc = encoder_for(model)
    torch.manual_seed(0)
    a = vae_loss(model, enc, x, n_samples=np.int64(3))
    torch.manual_seed(0)
    torch.testing.assert_close(a, vae_loss(model, enc, x, n_samples=3))
    assert torch.isfinite(iwae_loss(model, enc, x, k=np.int32(4)))
    with pytest.raises(TypeError, match="k: expected an integer, got float"):
        iwae_loss(model, enc, x, k=4.0)


def test_discrete_encoder_cannot_be_reparameterised():
    enc = CategoricalEncoder(2, 3)
    with pytest.raises(ValueError, match="cannot be reparameterised"):
        enc.sample(torch.randn(4, 2), 3, reparameterise=True)
    model = GaussianMixture(2, 3)
    with pytest.raises(ValueError, match="k: expected an integer >= 2"):
        iwae_loss(model, enc, torch.randn(4, 2), k=1)  # VIMCO needs a leave-one-out baseline


@pytest.mark.parametrize(
    ("model", "encoder", "match"),
    [
        (FactorAnalysis(3, 2), GaussianEncoder(3, 1), r"GaussianEncoder gives reals of shape \(1,\)"
         r" per datum, but FactorAnalysis's latents are reals of shape \(2,\)"),
        (FactorAnalysis(3, 2), CategoricalEncoder(3, 2), r"CategoricalEncoder gives one integer in"
         r" \[0, 2\) per datum, but FactorAnalysis's latents are reals of shape \(2,\)"),
        (GaussianMixture(3, 4), GaussianEncoder(3, 1), r"GaussianEncoder gives reals .* but "
         r"GaussianMixture's latents are integers of shape \(\)"),
        (GaussianMixture(3, 4), CategoricalEncoder(3, 5), r"CategoricalEncoder over 5 categories,"
         r" but GaussianMixture has n_components = 4"),
        (FactorAnalysis(3, 2).double(), GaussianEncoder(3, 2), r"encoder: its parameters are "
         r"torch.float32 but FactorAnalysis's latents are torch.float64"),
        (HierarchicalMixture(3), GaussianEncoder(3, 2), r"model: HierarchicalMixture's latents are "
         r"a tuple, not one tensor per sample"),
        (FactorAnalysis(4, 2), GaussianEncoder(3, 2), r"x: 3 values per datum .* but "
         r"FactorAnalysis's observations have 4"),
    ],
    ids=["latent-size", "discrete-for-continuous", "continuous-for-discrete", "categories",
         "dtype", "tuple-latents", "observation-size"],
)  # fmt: skip
def test_an_encoder_that_does_not_fit_the_model_is_named_before_the_model_runs(
    model, encoder, match
):
    x = torch.randn(4, 3, dtype=next(model.parameters()).dtype)
    rng = torch.get_rng_state()
    losses = [
        lambda: vae_loss(model, encoder, x),
        lambda: iwae_loss(model, encoder, x, k=3),
        lambda: rws_losses(model, encoder, x, k=3),
        lambda: BaselineLearner(model, encoder, "iwae", k=3).step(x),
    ]
    for loss in losses:
        with pytest.raises((ValueError, TypeError), match=match):
            loss()
    assert torch.equal(torch.get_rng_state(), rng)  # the check drew no random numbers


def test_the_fit_check_does_not_change_the_random_numbers_of_a_run():
    model, x = _fa(13)
    enc = encoder_for(model)
    torch.manual_seed(0)
    a = vae_loss(model, enc, x)  # the first call samples the model once, under fork_rng
    torch.manual_seed(0)
    b = vae_loss(model, enc, x)
    assert torch.equal(a, b)
