"""kernel_ridge_batched: fused many-small-problems KRR against the torch chain."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_PARAMS, gradcheck_on

from fastamort import kernel_ridge_batched, record_backends
from fastamort.ops.kernel_math import KERNEL_NAMES
from fastamort.ops.kernel_ridge_batched import kernel_ridge_batched_ref


def _data(b, n, m, d, p, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, d, generator=g, dtype=torch.float64) * 3
    y = torch.randn(b, n, p, generator=g, dtype=torch.float64)
    xn = torch.rand(b, m, d, generator=g, dtype=torch.float64) * 3
    return x.to(device), y.to(device), xn.to(device)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_matches_torch_chain(device, backend, kernel):
    for b, n, m, d, p in [(5, 1, 2, 1, 1), (7, 16, 5, 3, 2), (3, 33, 9, 4, 1)]:
        x, y, xn = _data(b, n, m, d, p, device)
        lam = torch.linspace(0.01, 1.0, b, dtype=torch.float64, device=device)
        with record_backends() as ran:
            fit = kernel_ridge_batched(
                x, y, lam, kernel=kernel, lengthscale=0.8, x_new=xn, backend=backend
            )
        assert ("kernel_ridge_batched", backend) in ran or backend == "torch"
        ref = kernel_ridge_batched_ref(x, y, lam, kernel, 0.8, xn)
        torch.testing.assert_close(fit.alpha, ref.alpha, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(fit.prediction, ref.prediction, rtol=1e-8, atol=1e-9)
        no_pred = kernel_ridge_batched(x, y, lam, kernel=kernel, lengthscale=0.8, backend=backend)
        assert no_pred.prediction is None
        torch.testing.assert_close(no_pred.alpha, ref.alpha, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_float32_vector_targets(device, backend):
    x, y, xn = _data(64, 12, 3, 2, 1, device, seed=3)
    fit = kernel_ridge_batched(x.float(), y[..., 0].float(), 0.1, x_new=xn.float(), backend=backend)
    ref = kernel_ridge_batched_ref(x, y, 0.1, "gaussian", 1.0, xn)
    assert fit.alpha.shape == (64, 12) and fit.prediction.shape == (64, 3)
    torch.testing.assert_close(fit.prediction.double(), ref.prediction[..., 0], rtol=0, atol=1e-3)


FUSED_PARAMS = [p for p in BACKEND_PARAMS if p.values[1] != "torch"]  # torch: the composition


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _fit_grads(backend, x, y, lam, ell, xn, kernel="gaussian"):
    """(alpha, prediction, grads of x, y, lam, ell, x_new) for a fixed random upstream."""
    x, y, lam, ell, xn = _leaves(x, y, lam, ell, xn)
    fit = kernel_ridge_batched(x, y, lam, kernel=kernel, lengthscale=ell, x_new=xn, backend=backend)
    g = torch.Generator().manual_seed(9)
    ga = torch.randn(fit.alpha.shape, generator=g, dtype=torch.float64).to(fit.alpha)
    gp = torch.randn(fit.prediction.shape, generator=g, dtype=torch.float64).to(fit.alpha)
    loss = (fit.alpha * ga).sum() + (fit.prediction * gp).sum()
    grads = torch.autograd.grad(loss, (x, y, lam, ell, xn))
    return fit.alpha.detach(), fit.prediction.detach(), *grads


@pytest.mark.parametrize(("device", "backend"), FUSED_PARAMS)
@pytest.mark.parametrize("kernel", ["gaussian", "matern52", "laplacian"])
def test_fused_gradcheck(device, backend, kernel):
    """float64 gradcheck of every input through the fused op, whose backward really runs on
    the fused backend (no composition)."""
    if backend == "triton" and kernel != "gaussian":
        pytest.skip("the interpreter is slow: one kernel covers the Triton route")
    x, y, xn = _data(2, 3, 2, 1, 1, device, seed=5)
    lam = torch.tensor([0.05, 0.3], dtype=torch.float64, device=device)
    ell = torch.tensor(1.1, dtype=torch.float64, device=device)

    def fit(x, y, lam, ell, xn):
        out = kernel_ridge_batched(
            x, y, lam, kernel=kernel, lengthscale=ell, x_new=xn, backend=backend
        )
        return out.alpha, out.prediction

    with record_backends() as ran:
        assert gradcheck_on(backend, fit, tuple(_leaves(x, y, lam, ell, xn)))
    assert ("kernel_ridge_batched", backend) in ran
    assert ("kernel_ridge_batched.backward", backend) in ran
    assert not [r for r in ran if r[1].endswith("composed")], ran


@pytest.mark.parametrize(("device", "backend"), FUSED_PARAMS)
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 2e-3)], ids=["float64", "float32"]
)
def test_fused_gradients_match_the_torch_composition(device, backend, dtype, tol):
    x, y, xn = _data(3, 7, 4, 3, 2, device, seed=6)  # n = 7: prime
    lam = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64, device=device)
    ell = torch.tensor(0.9, dtype=torch.float64, device=device)
    args = [t.to(dtype) for t in (x, y, lam, ell, xn)]
    with record_backends() as ran:
        got = _fit_grads(backend, *args)
    assert ("kernel_ridge_batched.backward", backend) in ran
    want = _fit_grads("torch", x, y, lam, ell, xn)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)


@pytest.mark.parametrize(("device", "backend"), FUSED_PARAMS)
def test_fused_gradients_awkward_shapes(device, backend):
    """n = 1, a vector y (p = 1), one shared λ and ℓ broadcast over batch dimensions, x_new
    broadcast against x: the gradients come back in the shapes given, as the composition's."""
    g = torch.Generator().manual_seed(7)
    for n in (1, 5):
        x = torch.rand(2, 1, n, 2, generator=g, dtype=torch.float64).to(device)
        y = torch.randn(2, 3, n, generator=g, dtype=torch.float64).to(device)
        xn = torch.rand(1, 3, 4, 2, generator=g, dtype=torch.float64).to(device)
        lam = torch.tensor(0.2, dtype=torch.float64, device=device)
        ell = torch.tensor(0.7, dtype=torch.float64, device=device)
        got, want = (
            _fit_grads(name, x, y, lam, ell, xn, kernel="matern32") for name in (backend, "torch")
        )
        for a, b, t in zip(got, want, (None, None, x, y, lam, ell, xn), strict=True):
            assert t is None or a.shape == t.shape
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_gradients_of_lam_and_lengthscale_only(device, backend):
    x, y, xn = _data(2, 6, 3, 2, 1, device, seed=4)
    ell = torch.tensor(0.9, dtype=torch.float64, device=device, requires_grad=True)
    lam = torch.tensor(0.2, dtype=torch.float64, device=device, requires_grad=True)
    fit = kernel_ridge_batched(x, y, lam, lengthscale=ell, x_new=xn, backend=backend)
    fit.prediction.sum().backward()
    ref_ell = ell.detach().clone().requires_grad_()
    ref_lam = lam.detach().clone().requires_grad_()
    kernel_ridge_batched_ref(x, y, ref_lam, "gaussian", ref_ell, xn).prediction.sum().backward()
    torch.testing.assert_close(ell.grad, ref_ell.grad)
    torch.testing.assert_close(lam.grad, ref_lam.grad)


def test_bad_input():
    x = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="y: expected shape"):
        kernel_ridge_batched(x, torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="x_new: feature dimension"):
        kernel_ridge_batched(x, torch.ones(2, 5), 0.1, x_new=torch.rand(2, 3, 2))
    # x_new's own problems name x_new, not x
    with pytest.raises(ValueError, match="x_new: contains NaN"):
        kernel_ridge_batched(x, torch.ones(2, 5), 0.1, x_new=torch.full((2, 3, 3), torch.nan))
    with pytest.raises(TypeError, match=r"x_new: expected a torch\.Tensor"):
        kernel_ridge_batched(x, torch.ones(2, 5), 0.1, x_new=x.numpy())
    with pytest.raises(ValueError, match="x_new: expected at least 2 dimensions"):
        kernel_ridge_batched(x, torch.ones(2, 5), 0.1, x_new=torch.rand(3))
    # the vector-or-columns rule is in the message
    with pytest.raises(ValueError, match=r"or \(\.\.\., 5\) with one dimension fewer than x"):
        kernel_ridge_batched(x, torch.ones(5, 3), 0.1)
    with pytest.raises(ValueError, match="lam: must be >= 0"):
        kernel_ridge_batched(x, torch.ones(2, 5), -0.1)
