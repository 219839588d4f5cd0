"""gram and gram_matmul autograd on every backend: second derivatives, gradients only where they
are asked for, and the lengthscale gradient read off K."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from conftest import BACKEND_PARAMS
from torch.autograd import gradcheck, gradgradcheck

import fastamort
from fastamort import gram, gram_matmul, record_backends
from fastamort.ops.gram import gram_twice_differentiable
from fastamort.ops.kernel_math import (
    KERNEL_NAMES,
    kernel_from_s,
    lengthscale_factor_from_k,
)

gram_module = importlib.import_module("fastamort.ops.gram")
gram_matmul_module = importlib.import_module("fastamort.ops.gram_matmul")
DTYPES = [torch.float32, torch.float64]
HAS_CPP = fastamort.backend_report()["cpp"] == "available"


def _randn(*shape, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


# --------------------------------------------------------------------------------------------
# Second derivatives
# --------------------------------------------------------------------------------------------


def _second_order(backend, kernel, symmetric, matmul, device):
    """First and second derivatives of a weighted loss through gram / gram_matmul."""
    x = _randn(9, 3, seed=1, device=device).requires_grad_()
    y = None if symmetric else _randn(7, 3, seed=2, device=device).requires_grad_()
    ell = torch.tensor(1.4, dtype=torch.float64, device=device, requires_grad=True)
    n = 9 if symmetric else 7
    v = _randn(n, 2, seed=3, device=device).requires_grad_() if matmul else None
    if backend is None:  # the reference: torch formulas autograd differentiates twice
        out = gram_twice_differentiable(x, y, kernel, ell)
        out = out @ v if matmul else out
    elif matmul:
        out = gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend=backend)
    else:
        out = gram(x, y, kernel=kernel, lengthscale=ell, backend=backend)
    loss = (out * _randn(*out.shape, seed=4, device=device)).sum()
    inputs = [t for t in (x, y, v, ell) if t is not None]
    first = torch.autograd.grad(loss, inputs, create_graph=True)
    second_loss = sum(
        (g * _randn(*g.shape, seed=5 + i, device=device)).sum() for i, g in enumerate(first)
    )
    second = torch.autograd.grad(second_loss, inputs)
    return [g.detach() for g in first], second


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
@pytest.mark.parametrize("matmul", [False, True], ids=["gram", "gram_matmul"])
def test_second_derivatives_match_the_torch_backend(device, backend, kernel, symmetric, matmul):
    """grad of grad through every backend equals the torch formulas (the compiled backends
    were silently wrong). The torch backend's Laplacian (``torch.cdist``) cannot be
    differentiated twice: PyTorch says so."""
    if backend == "torch" and kernel == "laplacian":
        with pytest.raises(NotImplementedError, match="_cdist_backward"):
            _second_order(backend, kernel, symmetric, matmul, device)
        return
    got_first, got_second = _second_order(backend, kernel, symmetric, matmul, device)
    want_first, want_second = _second_order(None, kernel, symmetric, matmul, device)
    for got, want in zip(got_first + list(got_second), want_first + list(want_second), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", ["gaussian", "matern52", "laplacian"])
@pytest.mark.parametrize("matmul", [False, True], ids=["gram", "gram_matmul"])
def test_gradgradcheck_float64(device, backend, kernel, matmul):
    if backend == "torch" and kernel == "laplacian":
        pytest.skip("torch.cdist's backward cannot be differentiated (see above)")
    x = _randn(5, 2, seed=6, device=device).requires_grad_()
    y = _randn(4, 2, seed=7, device=device).requires_grad_()
    v = _randn(4, 2, seed=8, device=device).requires_grad_()
    ell = torch.tensor(1.1, dtype=torch.float64, device=device, requires_grad=True)
    if matmul:

        def fn(x, y, v, ell):
            return gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, y, v, ell)
    else:

        def fn(x, y, ell):
            return gram(x, y, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, y, ell)
    with record_backends() as ran:
        assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    assert ("gram_matmul" if matmul else "gram", backend) in ran


# --------------------------------------------------------------------------------------------
# Gradients only where asked
# --------------------------------------------------------------------------------------------


class _Spy:
    """Records the calls of one backend's Gram kernels (backend_impl) and forwards them."""

    def __init__(self, monkeypatch, backend):
        impl = gram_module.backend_impl("gram", backend)
        self.calls: list[tuple] = []
        names = ("gram_forward", "gram_matmul_forward", "gram_backward", "gram_ell_grad")
        spied = {name: self._wrap(name, getattr(impl, name)) for name in names}

        class Impl:
            pass

        for name, fn in spied.items():
            setattr(Impl, name, staticmethod(fn))
        for module in (gram_module, gram_matmul_module):
            monkeypatch.setattr(module, "backend_impl", lambda kind, b: Impl)

    def _wrap(self, name, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            if name == "gram_backward":  # (x, y, grad, v, kid, ell, need_x, need_y)
                need = args[6:8] if len(args) > 6 else (kwargs["need_x"], kwargs["need_y"])
                self.calls.append((name, *need))
            else:
                self.calls.append((name,))
            return out

        return call

    def backward_calls(self):
        return [c for c in self.calls if c[0] in ("gram_backward", "gram_ell_grad")]


def _compiled_params():
    return [p for p in BACKEND_PARAMS if p.values[1] != "torch"]


@pytest.mark.parametrize(("device", "backend"), _compiled_params())
def test_gram_backward_forms_only_the_gradients_asked_for(monkeypatch, device, backend):
    spy = _Spy(monkeypatch, backend)
    x = _randn(6, 3, seed=9, device=device)
    y = _randn(5, 3, seed=10, device=device)
    ell = torch.tensor(1.2, dtype=torch.float64, device=device)

    # only x: y's gradient is not formed
    xr = x.clone().requires_grad_()
    gram(xr, y, lengthscale=ell, backend=backend).sum().backward()
    assert spy.backward_calls() == [("gram_backward", True, False)]
    # only y
    spy.calls.clear()
    yr = y.clone().requires_grad_()
    gram(x, yr, lengthscale=ell, backend=backend).sum().backward()
    assert spy.backward_calls() == [("gram_backward", False, True)]
    # only ℓ (the kernel step: sleep points detached): read off K, no point gradient and no
    # distances (gram_ell_grad takes K and the upstream gradient, not the points)
    for yy in (y, None):
        spy.calls.clear()
        er = ell.clone().requires_grad_()
        gram(x, yy, lengthscale=er, backend=backend).sum().backward()
        assert spy.backward_calls() == [("gram_ell_grad",)]
        assert er.grad is not None


@pytest.mark.parametrize(("device", "backend"), _compiled_params())
def test_gram_matmul_backward_forms_only_the_gradients_asked_for(monkeypatch, device, backend):
    spy = _Spy(monkeypatch, backend)
    x = _randn(6, 3, seed=11, device=device)
    y = _randn(5, 3, seed=12, device=device)
    v = _randn(5, 2, seed=13, device=device)
    ell = torch.tensor(0.9, dtype=torch.float64, device=device)

    # the kernel step's prediction: ℓ and v (through the ridge coefficients) only
    er, vr = ell.clone().requires_grad_(), v.clone().requires_grad_()
    gram_matmul(x, y, vr, lengthscale=er, backend=backend).sum().backward()
    assert ("gram_backward", False, False) in spy.calls
    assert [c for c in spy.calls if c[0] == "gram_matmul_forward"] == [("gram_matmul_forward",)] * 2
    # only v: no point or lengthscale gradient at all
    spy.calls.clear()
    vr = v.clone().requires_grad_()
    gram_matmul(x, y, vr, lengthscale=ell, backend=backend).sum().backward()
    assert spy.backward_calls() == []
    # only x: no dv (no second product), no dy
    spy.calls.clear()
    xr = x.clone().requires_grad_()
    gram_matmul(xr, y, v, lengthscale=ell, backend=backend).sum().backward()
    assert spy.calls == [("gram_matmul_forward",), ("gram_backward", True, False)]


@pytest.mark.parametrize(("device", "backend"), _compiled_params())
def test_skipped_gradients_equal_the_full_ones(device, backend):
    """Each partial backward gives exactly what the full one gives for its inputs."""
    x = _randn(8, 4, seed=14, device=device)
    y = _randn(6, 4, seed=15, device=device)
    v = _randn(6, 3, seed=16, device=device)
    ell = torch.tensor(1.3, dtype=torch.float64, device=device)
    w = _randn(8, 3, seed=17, device=device)
    full = [t.clone().requires_grad_() for t in (x, y, v, ell)]
    (gram_matmul(*full[:3], lengthscale=full[3], backend=backend) * w).sum().backward()
    for i in range(4):
        args = [t.clone().requires_grad_(j == i) for j, t in enumerate((x, y, v, ell))]
        (gram_matmul(*args[:3], lengthscale=args[3], backend=backend) * w).sum().backward()
        torch.testing.assert_close(args[i].grad, full[i].grad, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not HAS_CPP, reason="extension not built")
def test_cpp_binding_skips_the_point_gradients():
    from fastamort import _C

    x = _randn(1, 30, 6, seed=18).numpy()
    y = _randn(1, 20, 6, seed=19).numpy()
    g = _randn(1, 30, 20, seed=20).numpy()
    full = _C.gram_backward(x, y, g, None, 0, 1.5)
    for need_x, need_y in [(True, False), (False, True), (False, False)]:
        dx, dy, dell = _C.gram_backward(x, y, g, None, 0, 1.5, need_x, need_y)
        assert (dx is None) != need_x and (dy is None) != need_y
        assert dell[0] == pytest.approx(full[2][0], rel=1e-13)
        if need_x:
            assert (dx == full[0]).all()
        if need_y:
            assert (dy == full[1]).all()


# --------------------------------------------------------------------------------------------
# The lengthscale gradient read off K
# --------------------------------------------------------------------------------------------

S_GRID = torch.cat([torch.zeros(1), torch.logspace(-12, 3.3, 400, dtype=torch.float64)])


def kernel_grad_from_s(s: torch.Tensor, kernel: str) -> torch.Tensor:
    """dk/ds elementwise for s >= 0 (0 where k is not differentiable, at s = 0 for
    ``matern12``): the closed forms the distance form of ℓ·∂k/∂ℓ is checked against."""
    if kernel == "gaussian":
        return -0.5 * torch.exp(-0.5 * s)
    if kernel == "matern12":
        r = s.sqrt()
        return torch.where(s > 0, -0.5 * torch.exp(-r) / torch.where(s > 0, r, 1.0), 0.0 * s)
    if kernel == "matern32":
        return -1.5 * torch.exp(-(3.0 * s).sqrt())
    if kernel == "matern52":
        a = (5.0 * s).sqrt()
        return -(5.0 / 6.0) * (1.0 + a) * torch.exp(-a)
    assert kernel == "laplacian", kernel
    return -torch.exp(-s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_lengthscale_factor_from_k_matches_the_distance_form(dtype, kernel):
    """φ(k(s)) = ℓ·∂k/∂ℓ = −2s·k'(s) (−s·k'(s) for the Laplacian) to a few ulps of 1."""
    s = S_GRID
    k = kernel_from_s(s, kernel)
    factor = 1.0 if kernel == "laplacian" else 2.0
    want = -factor * s * kernel_grad_from_s(s, kernel)
    got = lengthscale_factor_from_k(k.to(dtype), kernel).double()
    # k rounded to the dtype moves φ by |dφ/dk|·ulp(k) <= a few ulps (|dφ/dk| <= 2 + log 1/k·k)
    assert float((got - want).abs().max()) <= 8 * torch.finfo(dtype).eps


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_lengthscale_only_gradient_matches_the_full_backward(device, backend, dtype, kernel):
    """dℓ from K equals dℓ from the distances (x also requiring grad) and the torch one,
    including entries where k underflows and where k rounds to 1."""
    x = _randn(2, 11, 3, seed=21, dtype=dtype, device=device)
    y = _randn(2, 7, 3, seed=22, dtype=dtype, device=device)
    y[0, 0] = 30.0  # far: k underflows to 0
    w = _randn(2, 11, 7, seed=23, dtype=dtype, device=device)
    tol = {torch.float32: 2e-5, torch.float64: 1e-12}[dtype]
    for ell_value in (0.3, 1.7, 1e4):  # 1e4: k = 1 to the last bit off the far point
        grads = []
        for b, points_grad in ((backend, False), (backend, True), ("torch", False)):
            xs = x.clone().requires_grad_(points_grad)
            ell = torch.tensor(ell_value, dtype=dtype, device=device, requires_grad=True)
            (gram(xs, y, kernel=kernel, lengthscale=ell, backend=b) * w).sum().backward()
            grads.append(float(ell.grad))
        scale = float(w.abs().sum()) / ell_value  # |ℓ ∂k/∂ℓ| <= 1: size of Σ w ∂k/∂ℓ
        assert abs(grads[0] - grads[1]) <= tol * scale, (ell_value, grads)
        assert abs(grads[0] - grads[2]) <= tol * scale, (ell_value, grads)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
def test_lengthscale_only_gradcheck_float64(device, backend, kernel, symmetric):
    x = _randn(7, 3, seed=24, device=device)
    y = None if symmetric else _randn(5, 3, seed=25, device=device)
    ell = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(
        lambda e: gram(x, y, kernel=kernel, lengthscale=e, backend=backend), (ell,), eps=1e-6
    )
    v = _randn(7 if symmetric else 5, 2, seed=26, device=device)
    assert gradcheck(
        lambda e: gram_matmul(x, y, v, kernel=kernel, lengthscale=e, backend=backend),
        (ell,),
        eps=1e-6,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_lengthscale_factor_is_zero_where_k_is_zero_subnormal_or_one(dtype):
    tiny = torch.finfo(dtype).tiny
    k = torch.tensor([0.0, tiny / 4, 1.0], dtype=dtype)
    for kernel in KERNEL_NAMES:
        assert torch.equal(lengthscale_factor_from_k(k, kernel), torch.zeros(3, dtype=dtype))
        assert math.isfinite(float(lengthscale_factor_from_k(k.new_tensor([tiny]), kernel)[0]))
