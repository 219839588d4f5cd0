"""The neural process (NeuralProcess, ConditionalNP) and the neural-process experiment."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import run_quick
from torch import nn

import fastamort
from fastamort.experiments.neural_process import QUICK, oracle_log_likelihood
from fastamort.models.base import is_expfam
from fastamort.models.neural_process import ConditionalNP, NeuralProcess


def _task(b: int = 3, c: int = 4, t: int = 6, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xc = torch.rand(b, c, 1, generator=g, dtype=dtype) * 6 - 3
    xt = torch.rand(b, t, 1, generator=g, dtype=dtype) * 6 - 3
    return xc, torch.sin(xc), xt, torch.sin(xt)


def test_shapes_and_dtype():
    torch.manual_seed(0)
    net = NeuralProcess(r_dim=8, z_dim=5, h_dim=16)
    xc, yc, xt, yt = _task()
    assert net.encode(xc, yc).shape == (3, 8)
    prior = net.latent(xc, yc)
    assert prior.loc.shape == (3, 5) and bool((prior.scale >= 0.1).all())
    mu, std = net.decode(xt, torch.randn(3, 7, 5))
    assert mu.shape == std.shape == (3, 7, 6, 1) and bool((std >= 0.1).all())
    assert net.elbo(xc, yc, xt, yt).shape == (3,)
    assert net.predictive_log_likelihood(xc, yc, xt, yt, n_samples=50, chunk=20).shape == (3,)
    mean, sd = net.predict(xc, yc, xt, n_samples=30)
    assert mean.shape == sd.shape == (3, 6, 1)
    net64 = net.double()
    xc, yc, xt, yt = _task(dtype=torch.float64)
    cond = net64.condition(xc[0], yc[0], xt[0])
    z, y = cond.sample(4)
    assert z.shape == (4, 5) and y.shape == (4, 6)
    assert z.dtype == y.dtype == torch.float64
    assert cond.log_joint(z, y).dtype == torch.float64
    assert cond.obs_dim == 6 and cond.latent_dim == 5 and is_expfam(cond)


def test_conditional_log_joint_matches_torch_distributions():
    torch.manual_seed(1)
    net = NeuralProcess(r_dim=8, z_dim=4, h_dim=16).double()
    xc, yc, xt, _ = _task(b=1, dtype=torch.float64)
    cond = net.condition(xc, yc, xt)
    z, y = cond.sample(10)
    loc, scale = net.latent(xc, yc).loc, net.latent(xc, yc).scale
    ref = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    mu, std = net.decode(xt, z[None])  # (1, 10, T, 1)
    ref = ref + torch.distributions.Normal(mu[0, ..., 0], std[0, ..., 0]).log_prob(y).sum(-1)
    torch.testing.assert_close(cond.log_joint(z, y), ref)


def test_conditional_sampling_statistics():
    torch.manual_seed(2)
    net = NeuralProcess(r_dim=8, z_dim=3, h_dim=16).double()
    xc, yc, xt, _ = _task(b=1, t=5, dtype=torch.float64)
    cond = net.condition(xc, yc, xt)
    z, y = cond.sample(20000)
    prior = cond.prior()
    zs = ((z - prior.loc) / prior.scale).detach()
    assert float(zs.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(zs.std()) == pytest.approx(1.0, abs=0.02)
    mu, std = cond.decoded(z)
    ys = (y - mu) / std
    assert float(ys.detach().mean()) == pytest.approx(0.0, abs=0.02)
    assert float(ys.detach().std()) == pytest.approx(1.0, abs=0.02)


def test_elbo_matches_a_hand_computed_reference():
    torch.manual_seed(3)
    net = NeuralProcess(r_dim=8, z_dim=2, h_dim=16).double()
    xc, yc, xt, yt = _task(b=2, dtype=torch.float64)
    torch.manual_seed(10)
    elbo = net.elbo(xc, yc, xt, yt, n_samples=3)
    torch.manual_seed(10)
    prior = net.latent(xc, yc)
    post = net.latent(torch.cat([xc, xt], 1), torch.cat([yc, yt], 1))
    z = post.rsample((3,)).transpose(0, 1)  # (B, S, dz)
    mu, std = net.decode(xt, z)
    y = yt[:, None]
    ll = (-0.5 * ((y - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum((2, 3))
    mq, sq, mp, sp = post.loc, post.scale, prior.loc, prior.scale
    kl = (sp.log() - sq.log() + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)
    torch.testing.assert_close(elbo, ll.mean(1) - kl)
    # without targets beyond the context, q is the prior: the KL term vanishes
    torch.manual_seed(10)
    same = net.elbo(xc, yc, xc[:, :0], yc[:, :0], n_samples=2)
    torch.testing.assert_close(same, torch.zeros(2, dtype=torch.float64))


def test_amortised_gradient_reaches_encoder_and_decoder():
    torch.manual_seed(4)
    net = NeuralProcess(r_dim=8, z_dim=4, h_dim=16)
    xc, yc, xt, yt = _task(b=1)
    cond = net.condition(xc, yc, xt)
    assert {n for n, _ in cond.named_parameters()} == {
        "process." + n for n, _ in net.named_parameters()
    }
    fastamort.amortised_objective(cond, yt.reshape(1, -1), n_sleep=200, lam=1e-2).backward()
    for part in (net.encoder, net.latent_head, net.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_oracle_predictive_is_a_proper_density():
    # the Bayes predictive of one target integrates to 1 over y (checked by quadrature)
    xc = torch.tensor([[[0.3], [1.2]]])
    yc = 0.5 * torch.sin(xc - 0.1)
    xt = torch.tensor([[[-1.0]]])
    ys = torch.linspace(-2.5, 2.5, 401)
    n = ys.numel()
    lls = oracle_log_likelihood(
        xc.expand(n, -1, -1),
        yc.expand(n, -1, -1),
        xt.expand(n, -1, -1),
        ys.reshape(n, 1, 1),
        dataclasses.replace(QUICK, oracle_grid=(100, 50)),
    )
    assert float(torch.trapezoid(lls.exp(), ys)) == pytest.approx(1.0, abs=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="x_dim"):
        NeuralProcess(x_dim=0)
    with pytest.raises(TypeError, match="z_dim"):
        NeuralProcess(z_dim=2.0)
    with pytest.raises(ValueError, match="min_std"):
        NeuralProcess(min_std=1.0)
    net = NeuralProcess(r_dim=4, z_dim=2, h_dim=8)
    xc, yc, xt, _ = _task(b=2)
    with pytest.raises(ValueError, match="x_context"):
        net.condition(xc, yc, xt)  # two tasks at once
    with pytest.raises(ValueError, match="y"):
        net.condition(xc[0], yc[0, :2], xt[0])
    with pytest.raises(ValueError, match="x"):
        net.encode(xc[..., 0], yc)
    with pytest.raises(TypeError, match="process"):
        ConditionalNP(nn.Linear(1, 1), xc[0], yc[0], xt[0])
    with pytest.raises(TypeError, match="x_target"):
        net.condition(xc[0], yc[0], [0.0])


@pytest.mark.slow
def test_neural_process_quick_run(tmp_path):
    flat = run_quick("neural-process", tmp_path)
    # both trainings beat the untrained networks and the context-free Gaussian
    for method in ("amortised", "elbo_long"):
        assert flat[f"{method}_pred_ll"] > flat["untrained_pred_ll"] + 0.3, method
        assert flat[f"{method}_pred_ll"] > flat["marginal_pred_ll"] + 0.1, method
    # nothing beats the Bayes predictive of the true process (up to Monte Carlo noise)
    assert flat["oracle_pred_ll"] > max(flat["amortised_pred_ll"], flat["elbo_long_pred_ll"])
    assert "| method |" in (tmp_path / "results.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "predictions.png").exists()
