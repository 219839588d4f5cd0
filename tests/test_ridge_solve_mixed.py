"""The float32-factor + float64-refinement ridge solve and where the estimator uses it."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import fastamort
import fastamort.ops.ridge_solve_mixed as rsm
from fastamort import ridge_solve
from fastamort.models import FactorAnalysis
from fastamort.solvers.exact import exact_solve

BACKENDS = ["torch"] + (["cpp"] if fastamort.backend_report()["cpp"] == "available" else [])


def _system(n: int, p: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 4)
    return k, torch.randn(n, p, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_float64_solve(backend):
    k, b = _system(257, 3)
    x = rsm.ridge_solve_mixed(k, b, 1e-2, backend)
    ref = ridge_solve(k, b, 1e-2)
    assert x is not None and x.dtype == torch.float64
    assert float((x - ref).abs().max() / ref.abs().max()) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    k, b = _system(23, 2, seed=1)
    lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    k.requires_grad_()
    b.requires_grad_()

    def solve(k, b, lam):  # symmetric input, as the op reads K as a symmetric matrix
        return rsm.ridge_solve_mixed((k + k.mT) / 2, b, lam, backend)

    assert gradcheck(solve, (k, b, lam), atol=1e-7, rtol=1e-6)


def test_gradients_equal_ridge_solve():
    """The gradients agree with the float64 route to the accuracy both can claim.

    Refinement stops at the backward error bound of a float64 Cholesky solve,
    ‖r‖∞ ≤ ‖x‖∞·‖A‖_F·eps·√n, so each solution is within κ(A)·√n·eps·(‖A‖_F/‖A‖₂) of the
    truth, normwise; a float64 Cholesky solve usually lands well inside that worst case
    (measured here against an extended-precision reference: 7e-14 of the largest entry
    against the mixed route's 6.6e-13, κ = 2342). An element-wise tolerance is not implied
    by either: small entries can differ by 1e-8 relative (seen on one BLAS build)."""
    k, b = _system(300, 2, seed=2)
    lam_value = 0.05
    eye = torch.eye(300, dtype=torch.float64)
    a = k + lam_value * eye
    bound = 2 * torch.linalg.cond(a) * 300**0.5 * torch.finfo(torch.float64).eps
    bound *= torch.linalg.matrix_norm(a) / torch.linalg.matrix_norm(a, ord=2)
    grads = []
    for solve in (lambda *a: rsm.ridge_solve_mixed(*a, "auto"), ridge_solve):
        kr, br = k.clone().requires_grad_(), b.clone().requires_grad_()
        lam = torch.tensor(lam_value, dtype=torch.float64, requires_grad=True)
        (solve(kr, br, lam) * torch.linspace(-1, 1, 600).reshape(300, 2)).sum().backward()
        grads.append((kr.grad, br.grad, lam.grad))
    for got, want in zip(*grads, strict=True):
        err = float((got - want).abs().max() / want.abs().max())
        assert err <= float(bound), (err, float(bound))


@pytest.mark.parametrize("backend", BACKENDS)
def test_declines_indefinite_and_ill_conditioned(backend):
    k, b = _system(64, 1, seed=3)
    assert rsm.ridge_solve_mixed(-k, b, 0.0, backend) is None  # no float32 factor
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    ill = (q * torch.logspace(0, -9, 64, dtype=torch.float64)) @ q.T  # κ = 1e9
    assert rsm.ridge_solve_mixed(ill, b, 0.0, backend) is None  # refinement cannot converge


def test_exact_solve_takes_the_float32_route_only_where_it_pays(monkeypatch):
    """From MIXED_MIN_N on, with few right-hand sides; falls back when the route declines."""
    calls = []
    real = rsm.ridge_solve_mixed

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr("fastamort.solvers.exact.ridge_solve_mixed", spy)
    monkeypatch.setattr(rsm, "MIXED_MIN_N", 100)
    k, b = _system(200, 4, seed=4)
    ref = ridge_solve(k, b, 1e-2)
    torch.testing.assert_close(exact_solve(k, b, 1e-2, "auto"), ref, rtol=1e-8, atol=1e-10)
    assert calls == [True]
    exact_solve(k, torch.randn(200, 5, dtype=torch.float64), 1e-2, "auto")  # 200 < 50·5
    exact_solve(k[:99, :99], b[:99], 1e-2, "auto")  # n below MIXED_MIN_N
    exact_solve(k.float(), b.float(), 1e-2, "auto")  # float32 system
    assert calls == [True]
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))
    ill = (q * torch.logspace(0, -9, 200, dtype=torch.float64)) @ q.T  # κ = 1e9
    torch.testing.assert_close(exact_solve(ill, b, 0.0, "auto"), ridge_solve(ill, b, 0.0))
    assert calls == [True, False]  # declined, and the float64 solve ran


def test_estimator_and_kernel_loss_agree_with_the_float64_route(monkeypatch):
    """The amortised objective, its gradient and the kernel loss: mixed route = float64."""
    torch.manual_seed(0)
    data = FactorAnalysis(4, 2).sample(50)[1]
    results, routes = [], []
    real = rsm.ridge_solve_mixed

    def spy(*args, **kwargs):
        routes.append(args[0].requires_grad)  # K needs a gradient in the kernel loss only
        return real(*args, **kwargs)

    monkeypatch.setattr("fastamort.solvers.exact.ridge_solve_mixed", spy)
    for min_n in (10**9, 100):
        monkeypatch.setattr(rsm, "MIXED_MIN_N", min_n)
        torch.manual_seed(1)
        model = FactorAnalysis(4, 2)
        sleep = model.sample(800)  # 9 right-hand sides: n >= 50·9 takes the float32 route
        est = fastamort.amortised_estimate(model, data, sleep=sleep, lam=1e-2)
        (grad,) = torch.autograd.grad(est.objective, [model.weight])
        kernel = est.kernel
        held = model.sample(100)
        loss = fastamort.kernel_learning.kernel_loss(model, kernel, sleep, held, lam=1e-2)
        (kgrad,) = torch.autograd.grad(loss, [next(kernel.parameters())])
        results.append((est.objective.detach(), grad, loss.detach(), kgrad))
    assert routes == [False, True]  # only the second pass went through the float32 route
    for got, want in zip(*results, strict=True):
        # float32 outputs (the model's gradient): both routes' float64 weights round to
        # float32 before the model's float32 sums, and one weight on the other side of a
        # rounding boundary moves a cancelling sum of O(1) terms by an ulp of 1 (6e-8)
        f32 = want.dtype == torch.float32
        torch.testing.assert_close(
            got, want, rtol=1e-5 if f32 else 1e-8, atol=2.5e-7 if f32 else 1e-10
        )


def test_mixed_precision_cpp_route_runs_and_matches_the_torch_route(monkeypatch):
    """On the C++ route the float32 factor comes from fastamort._C.cholesky_narrowed (K is
    narrowed in the copy); the torch route copies, factors and solves in torch. Same answer."""
    if rsm.cpp_unavailable_reason() is not None:
        pytest.skip(rsm.cpp_unavailable_reason())
    g = torch.Generator().manual_seed(21)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    k = torch.exp(-0.5 * torch.cdist(x, x) ** 2)
    b = torch.randn(300, 3, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(k + 0.1 * torch.eye(300, dtype=torch.float64), b)
    calls = []
    real_module = rsm._cpp.cpp_module()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real_module, name)

    monkeypatch.setattr(rsm._cpp, "cpp_module", Spy)
    fast = rsm.solve_mixed(k, b, 0.1, "cpp")
    assert calls and calls[0] == "cholesky_narrowed"
    calls.clear()
    slow = rsm.solve_mixed(k, b, 0.1, "torch")
    assert calls == []
    for got in (fast, slow):
        assert float((got - exact).abs().max() / exact.abs().max()) < 1e-12
    assert rsm.solve_mixed(-k, b, 0.0, "cpp") is None  # indefinite: declines
