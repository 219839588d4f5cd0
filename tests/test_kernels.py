"""Kernel modules: median heuristic, learnable lengthscale, feature networks in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

import fastamort
from fastamort.kernels import KERNEL_CLASSES, Gaussian, Laplacian, Matern32, median_distance


def test_median_heuristic_matches_scipy():
    x = torch.randn(300, 5, dtype=torch.float64)
    assert median_distance(x) == pytest.approx(np.median(pdist(x.numpy())))
    assert median_distance(x, p=1.0) == pytest.approx(np.median(pdist(x.numpy(), "cityblock")))
    k = Gaussian().init_from(x.reshape(300, 5, 1))  # observations are flattened
    assert float(k.lengthscale.detach()) == pytest.approx(np.median(pdist(x.numpy())))
    assert float(Laplacian().init_from(x).lengthscale) == pytest.approx(
        np.median(pdist(x.numpy(), "cityblock"))
    )
    assert bool(k.initialised)


@pytest.mark.parametrize("name", sorted(KERNEL_CLASSES))
def test_modules_wrap_the_engine_and_carry_gradients(name):
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    k = KERNEL_CLASSES[name](1.7)
    out = k(x, y)
    torch.testing.assert_close(out, fastamort.gram(x, y, kernel=name, lengthscale=1.7))
    out.sum().backward()
    assert k.log_lengthscale.grad is not None and torch.isfinite(k.log_lengthscale.grad)


def test_feature_network_runs_in_eval_mode_for_prediction():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    k = Matern32(1.0, features=net)
    net.train()
    x = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        net(torch.randn(50, 3, dtype=torch.float64) + 2.0)  # running stats != batch stats
    eval_out = net.eval()(x).detach()
    net.train()
    torch.testing.assert_close(k.features(x), eval_out)
    assert net.training, "the caller's mode is restored"
    assert not torch.allclose(k.features(x, train=True), eval_out)


def test_bad_lengthscale():
    with pytest.raises(ValueError, match="lengthscale"):
        Gaussian(-1.0)


def test_init_from_sets_batch_norm_statistics_from_the_data():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    x = torch.randn(500, 3, dtype=torch.float64) * 3 + 1
    k = Gaussian(features=net).init_from(x)
    bn = net[1]
    hidden = net[0](x).detach()
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    torch.testing.assert_close(bn.running_var, hidden.var(0))
    assert bn.momentum == 0.1, "the momentum is restored"
    out = k.features(x)
    torch.testing.assert_close(out.mean(0), net[1].bias.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.full((5, 3), float("nan")), "x: contains NaN or infinite values"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [1.0, 1.0]]), "x: contains NaN"),
        (torch.randn(5, 3, dtype=torch.float64) * 1e200, "x: pairwise distances overflow"),
        (torch.randn(0, 3), "x: the median heuristic needs at least 2 points"),
        (torch.randn(1, 3), "x: the median heuristic needs at least 2 points"),
        (torch.tensor(1.0), "x: expected observations of shape"),
    ],
)
def test_init_from_rejects_data_without_a_median_distance(x, match):
    k = Gaussian()
    with pytest.raises(ValueError, match=match):
        k.init_from(x)
    assert not bool(k.initialised) and float(k.lengthscale) == 1.0


def test_zero_rows_give_empty_results_and_0d_points_an_error():
    x, y = torch.randn(0, 3), torch.randn(4, 3)
    assert Gaussian(1.0)(x).shape == (0, 0)
    assert Gaussian(1.0)(x, y).shape == (0, 4)
    assert Gaussian(1.0)(y, x).shape == (4, 0)
    assert fastamort.kernels.flatten_points(torch.randn(0, 2, 3)).shape == (0, 6)
    assert fastamort.kernels.flatten_points(torch.randn(0)).shape == (0, 1)
    with pytest.raises(ValueError, match="x: expected observations of shape"):
        fastamort.kernels.flatten_points(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        Gaussian(1.0)([[1.0, 2.0]])
    with pytest.raises(ValueError, match="x: contains NaN"):
        median_distance(torch.tensor([[0.0], [float("nan")]]))


def test_kernel_loss_initialises_a_kernel_without_a_lengthscale_from_the_fitting_set():
    from fastamort.models import FactorAnalysis

    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).double()
    fit, held = model.sample(300), model.sample(100)
    fresh = Gaussian()
    loss = fastamort.kernel_loss(model, fresh, fit, held, 0.1)
    reference = Gaussian().init_from(fit[1])
    assert float(fresh.lengthscale) == pytest.approx(float(reference.lengthscale), rel=1e-12)
    torch.testing.assert_close(loss, fastamort.kernel_loss(model, reference, fit, held, 0.1))
    assert float(loss) < float(fastamort.kernel_loss(model, Gaussian(1.0), fit, held, 0.1))


def test_kernel_loss_recalibrates_batch_norm_on_each_fitting_set_and_scores_in_eval_mode():
    """The statistics follow the sleep set of each kernel step (they were frozen at init_from),
    and both sets are featurised with them (eval mode), never with their own batch's."""
    from fastamort.models import FactorAnalysis

    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).double()
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6)).double()
    kernel = Gaussian(features=net).init_from(model.sample(200)[1])
    with torch.no_grad():
        model.bias.add_(3.0)  # θ moves: the sleep set shifts
    fit, held = model.sample(300), model.sample(100)
    loss = fastamort.kernel_loss(model, kernel, fit, held, 0.1)
    hidden = net[0](fit[1]).detach()
    torch.testing.assert_close(net[1].running_mean, hidden.mean(0))
    torch.testing.assert_close(net[1].running_var, hidden.var(0))
    assert net.training, "the caller's mode is restored"
    frozen = Gaussian(float(kernel.lengthscale.detach()), features=net.eval())
    frozen.initialised.fill_(True)
    torch.testing.assert_close(loss, fastamort.kernel_loss(model, frozen, fit, held, 0.1))
    with pytest.raises(ValueError, match="x: BatchNorm statistics need at least 2 points"):
        kernel.calibrate_batch_norm(fit[1][:1])


def test_learner_step_recalibrates_batch_norm_on_its_kernel_step_sleep_set():
    """Each kernel step sets the statistics from its own fresh sleep set (drawn from the
    current model), and the model step then featurises in eval mode with those statistics."""
    import copy

    from fastamort.experiments._features import feature_kernel
    from fastamort.models import FactorAnalysis

    torch.manual_seed(0)
    model = FactorAnalysis(5, 2).double()
    data = model.sample(60)[1] + 1.0
    kernel = feature_kernel("linear-bn", 5, 100, seed=0, like=data)
    assert kernel.features_net[0].out_features == 5  # at most the input's width
    learner = fastamort.AmortisedLearner(model, kernel=kernel, n_sleep=80, n_held_out=20, lr=0.1)
    learner.initialise()
    for _ in range(2):
        before_model, before_net = copy.deepcopy(model), copy.deepcopy(kernel.features_net)
        state = torch.get_rng_state()
        learner.step(data)
        torch.set_rng_state(state)
        fit_x = before_model.sample(80)[1]  # the kernel step's fit set: the step's first draw
        hidden = before_net[0](fit_x).detach()
        bn = kernel.features_net[1]
        torch.testing.assert_close(bn.running_mean, hidden.mean(0))
        torch.testing.assert_close(bn.running_var, hidden.var(0))
