"""The ops registered with torch.library (namespace ``fastamort``): opcheck on every backend,
torch.compile(fullgraph=True) forward and backward, torch.func.vmap, and the value checks
that run inside the op bodies (the same errors as in eager mode)."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_PARAMS
from torch.autograd import gradcheck, gradgradcheck

import fastamort
from fastamort import record_backends
from fastamort.ops.cholesky import cholesky_op
from fastamort.ops.gram import gram_backward_op, gram_op
from fastamort.ops.gram_matmul import gram_matmul_op
from fastamort.ops.kernel_math import KERNEL_IDS
from fastamort.ops.kernel_ridge_batched import kernel_ridge_batched_op, kernel_ridge_solve_op
from fastamort.ops.ridge_solve import cholesky_solve_op, ridge_solve_op
from fastamort.ops.ridge_solve_mixed import ridge_solve_mixed, ridge_solve_mixed_op

GAUSS = KERNEL_IDS["gaussian"]
LAPLACE = KERNEL_IDS["laplacian"]


def checked_grads(fn, inputs, backend: str) -> bool:
    """torch's gradcheck; through the Triton interpreter in fast mode (one random direction
    per input instead of the full Jacobian: each interpreted launch costs about 0.1 s)."""
    return gradcheck(fn, inputs, fast_mode=backend == "triton")


def _points(*shape, dtype=torch.float64, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(grad)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# --------------------------------------------------------------------------------------------
# opcheck: schema, fake implementation, autograd registration, AOT dispatch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("same", [False, True], ids=["xy", "xx"])
def test_opcheck_gram(device, backend, dtype, same):
    x = _points(2, 5, 3, dtype=dtype, grad=True).to(device)
    y = None if same else _points(2, 7, 3, dtype=dtype, grad=True, seed=1).to(device)
    ell = torch.tensor(0.8, dtype=dtype, device=device, requires_grad=True)
    with record_backends() as ran:
        _opcheck(gram_op, (x, y, ell, GAUSS, backend))
    assert ("gram", backend) in ran


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kid", [GAUSS, LAPLACE], ids=["gaussian", "laplacian"])
def test_opcheck_gram_matmul(device, backend, kid):
    x = _points(2, 5, 3, grad=True).to(device)
    y = _points(2, 7, 3, grad=True, seed=1).to(device)
    v = _points(2, 7, 2, grad=True, seed=2).to(device)
    ell = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    with record_backends() as ran:
        _opcheck(gram_matmul_op, (x, y, v, ell, kid, backend))
    assert ("gram_matmul", backend) in ran


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("with_v", [False, True], ids=["gram", "gram_matmul"])
def test_opcheck_gram_backward(device, backend, with_v):
    x = _points(2, 5, 3).to(device)
    y = _points(2, 7, 3, seed=1).to(device)
    v = _points(2, 7, 2, seed=2).to(device) if with_v else None
    grad = _points(2, 5, 2 if with_v else 7, seed=3).to(device)
    ell = torch.tensor(0.7, dtype=torch.float64, device=device)
    needs = (True, True, with_v, True)
    _opcheck(gram_backward_op, (x, y, None, grad, v, ell, GAUSS, *needs, backend))


# --------------------------------------------------------------------------------------------
# The registered ops agree with the eager route, and their autograd formulas are right
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_registered_gram_matches_eager(device, backend):
    x = _points(3, 6, 4).to(device)
    y = _points(3, 5, 4, seed=1).to(device)
    v = _points(3, 5, 2, seed=2).to(device)
    ell = torch.tensor(0.9, dtype=torch.float64, device=device)
    eager = fastamort.gram(x, y, lengthscale=ell, backend=backend)
    torch.testing.assert_close(gram_op(x, y, ell, GAUSS, backend), eager, rtol=0, atol=0)
    eager_mv = fastamort.gram_matmul(x, y, v, lengthscale=ell, backend=backend)
    registered = gram_matmul_op(x, y, v, ell, GAUSS, backend)
    torch.testing.assert_close(registered, eager_mv, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kid", [GAUSS, LAPLACE], ids=["gaussian", "laplacian"])
def test_registered_gram_gradcheck(device, backend, kid):
    x = _points(2, 4, 3, grad=True).to(device)
    y = _points(2, 3, 3, grad=True, seed=1).to(device)
    v = _points(2, 3, 2, grad=True, seed=2).to(device)
    ell = torch.tensor(1.1, dtype=torch.float64, device=device, requires_grad=True)
    with record_backends() as ran:
        assert checked_grads(lambda a, b, e: gram_op(a, b, e, kid, backend), (x, y, ell), backend)
        assert checked_grads(
            lambda a, b, w, e: gram_matmul_op(a, b, w, e, kid, backend), (x, y, v, ell), backend
        )
        # a lengthscale-only gradient reads it off K (no distances)
        assert checked_grads(lambda e: gram_op(x.detach(), None, e, kid, backend), (ell,), backend)
    assert ("gram.backward", backend) in ran
    assert ("gram_matmul.backward", backend) in ran


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_registered_gram_gradgradcheck(device, backend):
    x = _points(2, 4, 3, grad=True).to(device)
    ell = torch.tensor(1.1, dtype=torch.float64, device=device, requires_grad=True)
    assert gradgradcheck(lambda a, e: gram_op(a, None, e, GAUSS, backend), (x, ell))


# --------------------------------------------------------------------------------------------
# ridge_solve
# --------------------------------------------------------------------------------------------
def _spd(batch, n, dtype=torch.float64, seed=0):
    a = _points(batch, n, n, dtype=dtype, seed=seed)
    return a @ a.mT / n + 0.5 * torch.eye(n, dtype=dtype)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_ridge_solve(device, backend, dtype):
    k = _spd(3, 5, dtype).to(device).requires_grad_()
    b = _points(3, 5, 2, dtype=dtype, grad=True, seed=1).to(device)
    lam = torch.tensor([0.1, 0.2, 0.3], dtype=dtype, device=device, requires_grad=True)
    with record_backends() as ran:
        _opcheck(ridge_solve_op, (k, b, lam, backend))
        _opcheck(cholesky_solve_op, (torch.linalg.cholesky(k.detach()), b.detach(), backend))
    assert ("ridge_solve", backend) in ran


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_registered_ridge_solve_gradcheck(device, backend):
    k = _spd(2, 4).to(device).requires_grad_()
    b = _points(2, 4, 3, grad=True, seed=1).to(device)
    lam = torch.tensor([0.1, 0.4], dtype=torch.float64, device=device, requires_grad=True)
    eager = fastamort.ridge_solve(k, b, lam, backend=backend)
    torch.testing.assert_close(ridge_solve_op(k, b, lam, backend)[0], eager, rtol=0, atol=0)
    with record_backends() as ran:
        assert checked_grads(
            lambda a, c, e: ridge_solve_op((a + a.mT) / 2, c, e, backend)[0], (k, b, lam), backend
        )
    assert ("ridge_solve.backward", backend) in ran


# --------------------------------------------------------------------------------------------
# cholesky, kernel_ridge_batched
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cholesky(device, backend, dtype):
    a = _spd(3, 6, dtype).to(device).requires_grad_()
    with record_backends() as ran:
        _opcheck(cholesky_op, (a, -1.0, backend))
    assert ("cholesky", backend) in ran
    eager = fastamort.cholesky(a.detach(), backend=backend)
    torch.testing.assert_close(cholesky_op(a.detach(), -1.0, backend), eager, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_registered_cholesky_gradcheck(device, backend):
    a = _spd(2, 4).to(device).requires_grad_()
    assert gradcheck(lambda m: cholesky_op((m + m.mT) / 2, -1.0, backend), (a,))


def _krr_backends():
    return [p for p in BACKEND_PARAMS if p.values[1] != "torch"]  # torch: the composition


@pytest.mark.parametrize("device,backend", _krr_backends())
@pytest.mark.parametrize("with_new", [False, True], ids=["fit", "predict"])
def test_opcheck_kernel_ridge_batched(device, backend, with_new):
    x = _points(4, 7, 2, grad=True).to(device)
    y = _points(4, 7, 3, grad=True, seed=1).to(device)
    x_new = _points(4, 5, 2, grad=True, seed=2).to(device) if with_new else None
    lam = torch.full((4,), 0.1, dtype=torch.float64, device=device, requires_grad=True)
    ell = torch.tensor(0.9, dtype=torch.float64, device=device, requires_grad=True)
    args = (x, y, lam, ell, x_new, GAUSS, backend)
    with record_backends() as ran:
        _opcheck(kernel_ridge_batched_op, args)  # autograd registration and AOT dispatch too
        # the backward's solve (no autograd formula of its own: double backward goes through
        # the torch composition)
        plain = (x.detach(), y.detach(), lam.detach(), ell.detach(), GAUSS, backend)
        _opcheck(kernel_ridge_solve_op, plain)
    assert ("kernel_ridge_batched", backend) in ran
    assert ("kernel_ridge_batched.backward", backend) in ran
    alpha, pred, shift = kernel_ridge_batched_op(*args)
    torch.testing.assert_close(shift, lam, rtol=0, atol=0)  # no jitter was needed
    eager = fastamort.kernel_ridge_batched(
        x.detach(), y.detach(), 0.1, lengthscale=0.9, x_new=x_new, backend=backend
    )
    torch.testing.assert_close(alpha, eager.alpha, rtol=0, atol=0)
    if with_new:
        torch.testing.assert_close(pred, eager.prediction, rtol=0, atol=0)
    else:
        assert pred.shape == (4, 0, 3)


@pytest.mark.parametrize("device,backend", _krr_backends())
def test_registered_kernel_ridge_batched_gradcheck(device, backend):
    x = _points(2, 3, 1, grad=True).to(device)
    y = _points(2, 3, 1, grad=True, seed=1).to(device)
    x_new = _points(2, 2, 1, grad=True, seed=2).to(device)
    lam = torch.tensor([0.1, 0.4], dtype=torch.float64, device=device, requires_grad=True)
    ell = torch.tensor(1.2, dtype=torch.float64, device=device, requires_grad=True)

    def fit(a, b, e, s, q):
        return kernel_ridge_batched_op(a, b, e, s, q, GAUSS, backend)[:2]

    with record_backends() as ran:
        assert checked_grads(fit, (x, y, lam, ell, x_new), backend)
    assert ("kernel_ridge_batched.backward", backend) in ran


def test_kernel_ridge_batched_backward_keeps_the_forward_jitter():
    """A fit that needed jitter: the backward solves with the same shift (λ + jitter), so its
    gradients are those of the function the forward computed."""
    x = torch.zeros(1, 4, 2, dtype=torch.float64, requires_grad=True)  # K = 1 1ᵀ: singular
    y = _points(1, 4, 1, grad=True, seed=1)
    lam = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    ell = torch.tensor(1.0, dtype=torch.float64)
    with pytest.warns(fastamort.NumericalWarning):
        alpha, _, shift = kernel_ridge_batched_op(x, y, lam, ell, None, GAUSS, "cpp")
    assert float(shift) > 0
    (grad_y,) = torch.autograd.grad(alpha.sum(), y)
    a = torch.ones(4, 4, dtype=torch.float64) + shift * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(
        grad_y[0, :, 0], torch.linalg.solve(a, torch.ones(4, 1, dtype=a.dtype))[:, 0]
    )


def test_compile_fullgraph_kernel_ridge_batched_backward():
    """The fused op's forward and its autograd formula trace into one graph (aot_eager)."""
    torch._dynamo.reset()
    x = _points(3, 6, 2, grad=True)
    y = _points(3, 6, 2, grad=True, seed=1)
    x_new = _points(3, 4, 2, grad=True, seed=2)
    ell = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)

    def loss(a, b, q, e, s):
        fit = fastamort.kernel_ridge_batched(a, b, s, lengthscale=e, x_new=q, backend="cpp")
        return fit.prediction.pow(2).sum() + fit.alpha.sum()

    inputs = (x, y, x_new, ell, lam)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    with record_backends() as ran:
        got = _value_and_grads(compiled, inputs)
    assert ("kernel_ridge_batched.backward", "cpp") in ran
    want = _value_and_grads(loss, inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# torch.func.vmap over a leading dimension
# --------------------------------------------------------------------------------------------
CPU_BACKENDS = [p for p in BACKEND_PARAMS if p.values[0] == "cpu" and p.values[1] != "triton"]


@pytest.mark.parametrize("device,backend", CPU_BACKENDS)
def test_vmap_gram(device, backend):
    x = _points(4, 6, 3)
    y = _points(4, 5, 3, seed=1)
    v = _points(4, 5, 2, seed=2)
    with record_backends() as ran:
        got = torch.func.vmap(lambda a: fastamort.gram(a, lengthscale=0.7, backend=backend))(x)
        got_xy = torch.func.vmap(lambda a, b: fastamort.gram(a, b, backend=backend))(x, y)
        # y shared (not vmapped) and v vmapped
        got_mv = torch.func.vmap(lambda w: fastamort.gram_matmul(x[0], y[0], w, backend=backend))(v)
        # a lengthscale per vmapped member: one call per member
        ells = torch.tensor([0.5, 0.7, 1.0, 2.0], dtype=torch.float64)
        got_ell = torch.func.vmap(lambda a, e: fastamort.gram(a, lengthscale=e, backend=backend))(
            x, ells
        )
    assert ("gram", backend) in ran and ("gram_matmul", backend) in ran
    torch.testing.assert_close(got, fastamort.gram(x, lengthscale=0.7, backend=backend))
    torch.testing.assert_close(got_xy, fastamort.gram(x, y, backend=backend))
    torch.testing.assert_close(got_mv, fastamort.gram(x[0], y[0], backend=backend) @ v)
    looped = torch.stack([fastamort.gram(x[i], lengthscale=ells[i]) for i in range(4)])
    torch.testing.assert_close(got_ell, looped)


@pytest.mark.parametrize("device,backend", CPU_BACKENDS)
def test_vmap_ridge_solve_and_cholesky(device, backend):
    k = _spd(5, 6)
    b = _points(5, 6, 2, seed=1)
    with record_backends() as ran:
        got = torch.func.vmap(lambda a, c: fastamort.ridge_solve(a, c, 0.1, backend=backend))(k, b)
        got_vec = torch.func.vmap(lambda c: fastamort.ridge_solve(k[0], c, 0.1, backend=backend))(
            b[..., 0]
        )
        lower = torch.func.vmap(lambda a: fastamort.cholesky(a, backend=backend))(k)
    assert ("ridge_solve", backend) in ran and ("cholesky", backend) in ran
    torch.testing.assert_close(got, fastamort.ridge_solve(k, b, 0.1, backend=backend))
    looped = torch.stack([fastamort.ridge_solve(k[0], b[i, :, 0], 0.1) for i in range(5)])
    torch.testing.assert_close(got_vec, looped)
    torch.testing.assert_close(lower, torch.linalg.cholesky(k))


def test_vmap_kernel_ridge_batched():
    x = _points(3, 2, 7, 2)
    y = _points(3, 2, 7, 1, seed=1)
    x_new = _points(3, 2, 4, 2, seed=2)
    fit = torch.func.vmap(lambda a, c, q: fastamort.kernel_ridge_batched(a, c, 0.1, x_new=q))
    alpha, pred = fit(x, y, x_new)
    eager = fastamort.kernel_ridge_batched(x, y, 0.1, x_new=x_new)
    torch.testing.assert_close(alpha, eager.alpha)
    torch.testing.assert_close(pred, eager.prediction)


@pytest.mark.parametrize("device,backend", CPU_BACKENDS)
def test_vmap_value_checks_raise_the_eager_errors(device, backend):
    x = _points(3, 4, 2)
    x[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="x: contains NaN or infinite values"):
        torch.func.vmap(lambda a: fastamort.gram(a, backend=backend))(x)
    k = _spd(2, 3)
    with pytest.raises(ValueError, match="lam: must be >= 0"):
        lam = torch.tensor([0.1, -1.0], dtype=torch.float64)
        torch.func.vmap(lambda a, e: fastamort.ridge_solve(a, a[:, :1], e, backend=backend))(k, lam)


# --------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): gram → ridge_solve → gram_matmul, forward and backward
# --------------------------------------------------------------------------------------------
def _chain(backend):
    def chain(x, y, xq, ell, lam):
        k = fastamort.gram(x, lengthscale=ell, backend=backend)
        alpha = fastamort.ridge_solve(k, y, lam, backend=backend)
        pred = fastamort.gram_matmul(xq, x, alpha, lengthscale=ell, backend=backend)
        lower = fastamort.cholesky(k + lam * torch.eye(k.shape[-1], dtype=k.dtype), backend=backend)
        return pred.pow(2).sum() + lower.diagonal(dim1=-2, dim2=-1).log().sum()

    return chain


def _chain_inputs():
    x = _points(2, 9, 3, grad=True)
    y = _points(2, 9, 2, grad=True, seed=1)
    xq = _points(2, 4, 3, grad=True, seed=2)
    ell = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    return x, y, xq, ell, lam


def _value_and_grads(fn, inputs):
    out = fn(*inputs)
    return (out.detach(), *torch.autograd.grad(out, inputs))


@pytest.mark.slow  # CPU compile: 10-30 s each on a 2-core x86-64 CPU
@pytest.mark.parametrize("device,backend", CPU_BACKENDS)
def test_compile_fullgraph_chain_matches_eager(device, backend):
    """aot_eager: the whole graph (forward and backward) is traced through the registered ops
    with no graph break; compiled == eager (values and every gradient)."""
    torch._dynamo.reset()
    inputs = _chain_inputs()
    compiled = torch.compile(_chain(backend), fullgraph=True, backend="aot_eager")
    with record_backends() as ran:
        got = _value_and_grads(compiled, inputs)
    for op in ("gram", "ridge_solve", "gram_matmul", "cholesky", "gram.backward"):
        assert (op, backend) in ran
    want = _value_and_grads(_chain(backend), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compile_fullgraph_chain_inductor():
    """The default (inductor) compiler, C++ code generation included, on the cpp backend."""
    torch._dynamo.reset()
    inputs = _chain_inputs()
    compiled = torch.compile(_chain("cpp"), fullgraph=True)
    got = _value_and_grads(compiled, inputs)
    want = _value_and_grads(_chain("cpp"), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device,backend", CPU_BACKENDS)
def test_compiled_value_checks_raise_the_eager_errors(device, backend):
    torch._dynamo.reset()
    x, y, xq, ell, lam = (t.detach() for t in _chain_inputs())
    compiled = torch.compile(_chain(backend), fullgraph=True, backend="aot_eager")
    compiled(x, y, xq, ell, lam)  # compiles once, then runs on bad values without recompiling
    bad = x.clone()
    bad[1, 3, 2] = float("inf")
    with pytest.raises(ValueError, match="x: contains NaN or infinite values"):
        compiled(bad, y, xq, ell, lam)
    with pytest.raises(ValueError, match="lengthscale: must be positive and finite"):
        compiled(x, y, xq, -ell, lam)
    with pytest.raises(ValueError, match="lam: must be >= 0"):
        compiled(x, y, xq, ell, -lam)


# --------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of amortised_objective with a fixed sleep set and kernel
# --------------------------------------------------------------------------------------------
def _objective_setup():
    from fastamort.kernels import Gaussian
    from fastamort.models import FactorAnalysis

    torch.manual_seed(0)
    model = FactorAnalysis(obs_dim=3, latent_dim=1).double()
    x_wake = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        sleep = model.sample(60)
    kernel = Gaussian().double().init_from(sleep[1])

    def objective(x):
        return fastamort.amortised_objective(model, x, sleep=sleep, kernel=kernel, lam=0.1)

    return model, x_wake, objective


@pytest.mark.slow  # CPU compile of the estimator: about 45 s on a 2-core x86-64 CPU
def test_compile_fullgraph_amortised_objective_matches_eager():
    torch._dynamo.reset()
    model, x_wake, objective = _objective_setup()
    params = list(model.parameters())
    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    got = compiled(x_wake)
    got_grads = torch.autograd.grad(got, params)
    want = objective(x_wake)
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    bad = x_wake.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x_wake: contains NaN or infinite values"):
        compiled(bad)


# --------------------------------------------------------------------------------------------
# ridge_solve_mixed (float32 factor, float64 refinement)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("declines", [False, True], ids=["refined", "float64-fallback"])
def test_opcheck_ridge_solve_mixed(backend, declines):
    if backend == "cpp" and fastamort.backend_report()["cpp"] != "available":
        pytest.skip("extension not built")
    k = _spd(1, 12)[0]
    if declines:  # κ far beyond float32: the float32 route declines, the op solves in float64
        q = torch.linalg.qr(_points(12, 12, seed=5))[0]
        k = q @ torch.diag(torch.logspace(0, -13, 12, dtype=torch.float64)) @ q.mT
    k.requires_grad_()
    b = _points(12, 2, grad=True, seed=1)
    lam = torch.tensor(1e-12 if declines else 0.1, dtype=torch.float64, requires_grad=True)
    _opcheck(ridge_solve_mixed_op, (k, b, lam, backend))
    x, _, k_norm = ridge_solve_mixed_op(k, b, lam, backend)
    assert bool(k_norm < 0) == declines
    eager = ridge_solve_mixed(k, b, lam, backend)
    assert (eager is None) == declines
    want = fastamort.ridge_solve(k, b, lam, backend=backend) if declines else eager
    torch.testing.assert_close(x, want, rtol=1e-9, atol=1e-9)
    sym = lambda a, c, e: ridge_solve_mixed_op((a + a.mT) / 2, c, e, backend)[0]  # noqa: E731
    if not declines:
        assert gradcheck(sym, (k, b, lam))


def test_compile_fullgraph_ridge_solve_mixed():
    torch._dynamo.reset()
    k = _spd(1, 10)[0].requires_grad_()
    b = _points(10, 3, grad=True, seed=1)

    def solve(a, c):
        return ridge_solve_mixed((a + a.mT) / 2, c, 0.1, "auto").square().sum()

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    got = _value_and_grads(compiled, (k, b))
    want = _value_and_grads(solve, (k, b))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
