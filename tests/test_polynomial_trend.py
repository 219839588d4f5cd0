"""The regression with an unpenalised polynomial trend (fastamort.polynomial_trend): against
the semi-parametric KRR's own block system, polynomials reproduced exactly, the ICA noise
bias it removes (against the exact E‖x − As‖² = Dσ²), and the errors."""

from __future__ import annotations

import math

import pytest
import torch

import fastamort
from fastamort import AmortisedLearner, amortised_estimate
from fastamort.estimator import objective_from_weights, regression_parts
from fastamort.kernels import Gaussian
from fastamort.models import FactorAnalysis
from fastamort.models.ica import LaplaceICA
from fastamort.polynomial_trend import polynomial_features, trend_terms, trend_weights


def _data(m: int = 40, n: int = 7, d: int = 3, p: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.5 + 0.3
    fw = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0
    v = torch.randn(n, p, generator=g, dtype=torch.float64)
    return fs, fw, v


def _monomials(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Raw monomials (no standardisation), written out independently of the module."""
    cols = [torch.ones(len(x), 1, dtype=x.dtype)]
    d = x.shape[1]
    if degree >= 1:
        cols += [x[:, i : i + 1] for i in range(d)]
    if degree >= 2:
        cols += [x[:, i : i + 1] * x[:, j : j + 1] for i in range(d) for j in range(i, d)]
    if degree >= 3:
        cols += [x[:, i : i + 1] ** 3 for i in range(d)]
    return torch.cat(cols, 1)


@pytest.mark.parametrize("degree", [0, 1, 2])
@pytest.mark.parametrize("shape", [(40, 7, 3, 4), (97, 1, 1, 1), (33, 13, 2, 1)])
def test_weights_solve_the_semiparametric_block_system(degree, shape):
    """W = [I 0] B⁻¹ [K_sw V; P_wᵀV] with B = [[K + λI, P], [Pᵀ, 0]], the normal equations
    of min ‖t − Pβ − Kα‖² + λαᵀKα (Pᵀα = 0), solved directly."""
    m, n, d, p = shape
    fs, fw, v = _data(m, n, d, p, seed=degree)
    kernel, lam = Gaussian(1.3), 0.05
    w, info = trend_weights(kernel, fs, fw, v, lam, degree)
    k = torch.exp(-(torch.cdist(fs, fs) ** 2) / (2 * 1.3**2))
    k_sw = torch.exp(-(torch.cdist(fs, fw) ** 2) / (2 * 1.3**2))
    ps, pw = _monomials(fs, degree), _monomials(fw, degree)
    q = ps.shape[1]
    block = torch.zeros(m + q, m + q, dtype=torch.float64)
    block[:m, :m] = k + lam * torch.eye(m, dtype=torch.float64)
    block[:m, m:], block[m:, :m] = ps, ps.T
    reference = torch.linalg.solve(block, torch.cat([k_sw @ v, pw.T @ v]))[:m]
    torch.testing.assert_close(w, reference, rtol=1e-7, atol=1e-9)
    assert info["trend"] == degree and info["trend_terms"] == q == trend_terms(d, degree)


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_every_polynomial_of_the_degree_is_reproduced_and_no_higher_one(degree):
    fs, fw, v = _data(seed=3)
    w, _ = trend_weights(Gaussian(1.0), fs, fw, v, 1e-2, degree)
    g = torch.Generator().manual_seed(4)
    coef = torch.randn(_monomials(fs, degree).shape[1], 2, generator=g, dtype=torch.float64)
    t = _monomials(fs, degree) @ coef
    torch.testing.assert_close(w.T @ t, v.T @ (_monomials(fw, degree) @ coef))
    higher = _monomials(fs, degree + 1)[:, -1:]  # the next degree's last monomial
    gap = (w.T @ higher - v.T @ _monomials(fw, degree + 1)[:, -1:]).abs().max()
    assert gap > 1e-3  # the plain kernel part does not reproduce it


def test_polynomial_features_are_standardised_monomials():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    centre, scale = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])
    u = (x - centre) / scale
    want = torch.stack(
        [torch.ones(2), u[:, 0], u[:, 1], u[:, 0] ** 2, u[:, 0] * u[:, 1], u[:, 1] ** 2], 1
    ).double()
    torch.testing.assert_close(polynomial_features(x, centre, scale, 2), want)
    assert polynomial_features(x, centre, scale, 0).shape == (2, 1)


def test_the_estimator_uses_the_trend_weights_on_the_kernels_backend():
    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).double()
    z, xs = model.sample(300)
    x = model.sample(50)[1]
    kernel = Gaussian(2.0, backend="torch")
    with fastamort.record_backends() as ran:
        est = amortised_estimate(model, x, sleep=(z, xs), kernel=kernel, lam=0.1, trend=2)
    assert ("ridge_solve", "torch") in ran or ("cholesky", "torch") in ran, ran
    fw = kernel.features(x).double()
    v = torch.cat([torch.ones(50, 1, dtype=torch.float64), model.sufficient_stats(x)], 1) / 50
    w, _ = trend_weights(kernel, xs.double(), fw, v, 0.1, 2)
    parts = regression_parts(model, z, xs, "expfam")
    torch.testing.assert_close(est.objective, objective_from_weights(model, w, parts, "expfam", x))
    assert est.info["trend"] == 2 and est.info["trend_terms"] == 15
    plain = amortised_estimate(model, x, sleep=(z, xs), kernel=kernel, lam=0.1)
    assert "trend" not in plain.info
    assert not torch.allclose(plain.objective, est.objective)


def test_the_trend_removes_the_ica_noise_bias():
    """At the true model, E‖x − As‖² over data from it is exactly Dσ², so the σ-gradient
    d/d log σ = E‖x − As‖²/σ² − D has mean 0. The plain regression's kernel smoothing
    inflates the estimate (σ = 0.1, M = 1000: 2.6× in docs/results/ica-analysis); with a
    quadratic trend it is unbiased. 8 sleep sets, fixed seeds."""
    torch.manual_seed(1)
    model = LaplaceICA(4, 4, init_std=0.1).double()
    x = model.sample(1000)[1]
    ratios = {None: [], 2: []}
    for seed in range(8):
        torch.manual_seed(100 + seed)
        sleep = model.sample(1000)
        for trend in ratios:
            est = amortised_estimate(
                model, x, sleep=sleep, kernel=Gaussian(), lam=1e-2, trend=trend
            )
            (g,) = torch.autograd.grad(est.objective, model.likelihood.log_std)
            ratios[trend].append(1 + float(g) / 4)  # Ê‖x − As‖² / Dσ²
    plain, trend = (sum(r) / len(r) for r in ratios.values())
    assert plain > 1.8, plain
    assert abs(trend - 1) < 0.35, trend


@pytest.mark.parametrize("bad", [3, -1, True, "2", 1.0])
def test_a_bad_degree_is_rejected_by_name(bad):
    model = FactorAnalysis(3, 1)
    x = model.sample(20)[1]
    with pytest.raises(ValueError, match="trend: expected None or a polynomial degree"):
        amortised_estimate(model, x, n_sleep=50, lam=0.1, trend=bad)
    with pytest.raises(ValueError, match="trend: expected None or a polynomial degree"):
        AmortisedLearner(model, trend=bad)


def test_the_trend_needs_the_exact_solver_and_no_intercept():
    model = FactorAnalysis(3, 1)
    x = model.sample(20)[1]
    with pytest.raises(ValueError, match="trend: a polynomial trend needs solver='exact'"):
        amortised_estimate(model, x, n_sleep=50, lam=0.1, trend=1, solver="nystrom")
    with pytest.raises(ValueError, match="trend: a polynomial trend needs solver='exact'"):
        amortised_estimate(model, x, n_sleep=50, lam=0.1, trend=1, intercept=True)
    with pytest.raises(ValueError, match="trend: a polynomial trend needs solver='exact'"):
        AmortisedLearner(model, trend=1, solver="cg")


def test_too_few_sleep_points_or_dependent_monomials_are_clear_errors():
    fs, fw, v = _data(m=10, d=4)
    with pytest.raises(ValueError, match="15 terms, not fewer than the M = 10 sleep points"):
        trend_weights(Gaussian(1.0), fs, fw, v, 0.1, 2)
    fs, fw, v = _data(m=30, d=3)
    fs[:, 2] = 5.0  # a constant feature: its standardised monomial is identically 0
    with pytest.raises(ValueError, match="monomials of the sleep features are linearly dependent"):
        trend_weights(Gaussian(1.0), fs, fw, v, 0.1, 1)


def test_the_learner_trains_with_a_trend_and_a_resume_must_match_it(tmp_path):
    torch.manual_seed(0)
    data = FactorAnalysis(3, 1).sample(200)[1]
    learner = AmortisedLearner(
        FactorAnalysis(3, 1), n_sleep=200, lam=0.1, learn_kernel=False, trend=2
    )
    history = learner.fit(data, epochs=1, batch_size=100, progress=False,
                          checkpoint=tmp_path / "ck.pt")  # fmt: skip
    assert len(history) == 2 and all(math.isfinite(h["objective"]) for h in history)
    assert learner.hyperparameters()["trend"] == 2
    other = AmortisedLearner(
        FactorAnalysis(3, 1), n_sleep=200, lam=0.1, learn_kernel=False, trend=1
    )
    with pytest.raises(ValueError, match="trend: 2 in the checkpoint, 1 here"):
        other.fit(data, epochs=2, batch_size=100, progress=False,
                  checkpoint=tmp_path / "ck.pt", resume=True)  # fmt: skip


def test_the_trend_under_torch_compile_is_a_clear_error():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    z, xs = model.sample(60)
    x = model.sample(10)[1]
    kernel = Gaussian(1.0)
    compiled = torch.compile(
        lambda w: fastamort.amortised_objective(
            model, w, sleep=(z, xs), kernel=kernel, lam=0.1, trend=1
        ),
        fullgraph=True,
        backend="eager",
    )
    with pytest.raises(Exception, match="trend: the polynomial trend's checks depend on the data"):
        compiled(x)
