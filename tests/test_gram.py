"""gram: every backend against float64 ground truth, autograd, batching, errors, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    BACKEND_PARAMS,
    CPP_ROUTE_SHAPES,
    CPP_ROUTE_SYMMETRIC,
    FLOOR,
    exact_gram,
    gradcheck_on,
    max_abs_err,
)

import fastamort
from fastamort import BackendUnavailableError, gram, gram_matmul, record_backends
from fastamort.ops.gram import gram_ref
from fastamort.ops.kernel_math import KERNEL_NAMES

DTYPES = [torch.float32, torch.float64]

# (M, N, D): 1s; primes; D on both sides of the direct/GEMM switch (4); sizes just past the
# 256-row blocks of the C++ GEMM route and the 32/64 tiles of Triton; D = 784 (MNIST).
SHAPES = [(1, 1, 1), (7, 5, 3), (37, 41, 5), (33, 65, 17), (257, 70, 40), (23, 29, 784)]
TRITON_SHAPES = [(1, 1, 1), (7, 5, 3), (37, 41, 5), (33, 65, 17)]


def _points(shape, dtype, device, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) + offset).to(dtype).to(device)


def _shapes(backend):
    return TRITON_SHAPES if backend == "triton" else SHAPES


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_matches_float64_ground_truth(device, backend, dtype, kernel):
    for m, n, d in _shapes(backend):
        ell = 0.7 * d**0.5
        # an offset far from the origin stresses the cancellation of the GEMM trick
        x = _points((m, d), dtype, device, seed=1, offset=3.0)
        y = _points((n, d), dtype, device, seed=2, offset=3.0)
        truth = exact_gram(x, y, kernel, ell)
        same_precision_torch = gram_ref(x, y, kernel, ell)
        with record_backends() as ran:
            k = gram(x, y, kernel=kernel, lengthscale=ell, backend=backend)
        assert ran == [("gram", backend)]
        assert k.shape == (m, n) and k.dtype == dtype and k.device.type == device
        bound = 2 * max_abs_err(same_precision_torch, truth) + FLOOR[dtype]
        assert max_abs_err(k, truth) <= bound, (m, n, d)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_symmetric_is_exact(device, backend, dtype, kernel):
    for m, _, d in _shapes(backend):
        x = _points((m, d), dtype, device, seed=3, offset=2.0)
        k = gram(x, kernel=kernel, lengthscale=1.3, backend=backend)
        assert torch.equal(k, k.T), "K(x, x) must be exactly symmetric"
        assert torch.equal(torch.diagonal(k), torch.ones(m, dtype=dtype, device=device))
        truth = exact_gram(x, None, kernel, 1.3)
        bound = 2 * max_abs_err(gram_ref(x, None, kernel, 1.3), truth) + FLOOR[dtype]
        assert max_abs_err(k, truth) <= bound


KERNEL_IDS = {name: i for i, name in enumerate(KERNEL_NAMES)}


@pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="extension not built")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["gaussian", "matern12", "matern32", "matern52"])
def test_cpp_tiled_routes_match_ground_truth(dtype, kernel):
    from fastamort import _C

    for m, n, d, route in CPP_ROUTE_SHAPES:
        assert _C.gram_route(m, n, d, KERNEL_IDS[kernel]) == route, (m, n, d)
        ell = 0.7 * d**0.5
        x = _points((m, d), dtype, "cpu", seed=1, offset=3.0)
        y = _points((n, d), dtype, "cpu", seed=2, offset=3.0)
        truth = exact_gram(x, y, kernel, ell)
        bound = 2 * max_abs_err(gram_ref(x, y, kernel, ell), truth) + FLOOR[dtype]
        k = gram(x, y, kernel=kernel, lengthscale=ell, backend="cpp")
        assert max_abs_err(k, truth) <= bound, (m, n, d)
    for m, d, route in CPP_ROUTE_SYMMETRIC:
        assert _C.gram_route(m, m, d, KERNEL_IDS[kernel]) == route, (m, d)
        ell = 0.7 * d**0.5
        x = _points((m, d), dtype, "cpu", seed=3, offset=2.0)
        k = gram(x, kernel=kernel, lengthscale=ell, backend="cpp")
        assert torch.equal(k, k.T), f"K(x, x) must be exactly symmetric on the {route} route"
        assert torch.equal(torch.diagonal(k), torch.ones(m, dtype=dtype))
        truth = exact_gram(x, None, kernel, ell)
        bound = 2 * max_abs_err(gram_ref(x, None, kernel, ell), truth) + FLOOR[dtype]
        assert max_abs_err(k, truth) <= bound


@pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="extension not built")
@pytest.mark.parametrize("kernel", ["gaussian", "matern32", "matern52", "matern12"])
def test_cpp_tiled_routes_backward_matches_reference_autograd(kernel):
    """Gradients on the tiled routes (gradcheck covers the small, direct ones) in float64."""
    shapes = [(m, n, d) for m, n, d, _ in CPP_ROUTE_SHAPES]
    shapes += [(m, None, d) for m, d, _ in CPP_ROUTE_SYMMETRIC]
    for m, n, d in shapes:
        x = _points((m, d), torch.float64, "cpu", seed=4, offset=1.0)
        y = None if n is None else _points((n, d), torch.float64, "cpu", seed=5, offset=1.0)
        weights = _points((m, m if n is None else n), torch.float64, "cpu", seed=6)
        ell = 0.8 * d**0.5
        got = _weighted_sum_grads(x, y, ell, weights, kernel, "cpp")
        want = _weighted_sum_grads(x, y, ell, weights, kernel, "torch")
        for g_cpp, g_ref in zip(got, want, strict=True):
            torch.testing.assert_close(g_cpp, g_ref, rtol=1e-9, atol=1e-9)


def _weighted_sum_grads(x, y, ell, weights, kernel, backend):
    """Gradients of sum(weights * K(x, y)) w.r.t. x, y (if given) and the lengthscale."""
    xs = x.clone().requires_grad_()
    ys = None if y is None else y.clone().requires_grad_()
    ell_t = torch.tensor(ell, dtype=x.dtype, requires_grad=True)
    k = gram(xs, ys, kernel=kernel, lengthscale=ell_t, backend=backend)
    inputs = [t for t in (xs, ys, ell_t) if t is not None]
    return torch.autograd.grad((k * weights).sum(), inputs)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_equals_looped(device, backend, dtype):
    # many small problems (the C++ batch-parallel path) and a few larger ones
    for b, m, n, d in [(9, 6, 5, 3), (3, 40, 33, 12)]:
        x = _points((b, m, d), dtype, device, seed=4)
        y = _points((b, n, d), dtype, device, seed=5)
        for yy in (y, None):
            batched = gram(x, yy, kernel="matern32", lengthscale=0.9, backend=backend)
            looped = torch.stack(
                [
                    gram(
                        x[i],
                        None if yy is None else yy[i],
                        kernel="matern32",
                        lengthscale=0.9,
                        backend=backend,
                    )
                    for i in range(b)
                ]
            )
            torch.testing.assert_close(batched, looped, rtol=0, atol=FLOOR[dtype] * 10)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_batch_dimensions_broadcast(device, backend):
    x = _points((2, 1, 7, 3), torch.float64, device, seed=6)
    y = _points((3, 5, 3), torch.float64, device, seed=7)
    k = gram(x, y, backend=backend)
    assert k.shape == (2, 3, 7, 5)
    torch.testing.assert_close(k[1, 2], exact_gram(x[1, 0], y[2], "gaussian", 1.0))


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
def test_gradcheck_float64(device, backend, kernel, symmetric):
    x = _points((6, 3), torch.float64, device, seed=8).requires_grad_()
    y = _points((5, 3), torch.float64, device, seed=9).requires_grad_()
    ell = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    if symmetric:

        def fn(x, ell):
            return gram(x, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, ell)
    else:

        def fn(x, y, ell):
            return gram(x, y, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, y, ell)
    with record_backends() as ran:
        assert gradcheck_on(backend, fn, inputs, eps=1e-6, atol=1e-7)
    assert ("gram", backend) in ran
    if backend != "torch":
        assert ("gram.backward", backend) in ran, "the backend's own backward must run"


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_non_contiguous_and_transposed_inputs(device, backend):
    base = _points((4, 11), torch.float64, device, seed=10)
    x = base.T  # (11, 4), transposed
    y = _points((9, 8), torch.float64, device, seed=11)[:, ::2]  # strided columns
    assert not x.is_contiguous() and not y.is_contiguous()
    k = gram(x, y, kernel="matern52", lengthscale=2.0, backend=backend)
    torch.testing.assert_close(k, exact_gram(x, y, "matern52", 2.0))


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_empty_inputs(device, backend):
    x = torch.zeros(0, 3, dtype=torch.float64, device=device)
    y = torch.ones(4, 3, dtype=torch.float64, device=device)
    assert gram(x, y, backend=backend).shape == (0, 4)
    assert gram(y, x, backend=backend).shape == (4, 0)
    assert gram(x, backend=backend).shape == (0, 0)
    assert gram(
        torch.zeros(2, 0, 3, dtype=torch.float64, device=device), backend=backend
    ).shape == (
        2,
        0,
        0,
    )


# Smallest lengthscale each dtype takes (ℓ² a normal number), and one just above it.
TINY_ELL = {torch.float32: 1.2e-19, torch.float64: 1.6e-154}


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # interpreter
def test_tiny_lengthscale_gives_zeros_not_nan(device, backend, dtype, kernel):
    # s = r²/ℓ² overflows to ∞ off the diagonal: k must be 0 there (the Matérns once gave
    # (1 + ∞)·0 = NaN), the diagonal exactly 1, and the gradients finite.
    x = (100 * torch.arange(6.0, dtype=dtype).reshape(3, 2)).to(device).requires_grad_()
    ell = torch.tensor(TINY_ELL[dtype], dtype=dtype, device=device, requires_grad=True)
    k = gram(x, kernel=kernel, lengthscale=ell, backend=backend)
    assert torch.equal(k.detach(), torch.eye(3, dtype=dtype, device=device))
    v = torch.ones(3, 1, dtype=dtype, device=device)
    kv = gram_matmul(x, x[[2, 0]], v[:2], kernel=kernel, lengthscale=ell, backend=backend)
    assert torch.equal(kv.detach(), torch.tensor([[1.0], [0.0], [1.0]], dtype=dtype))
    k.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ell.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lengthscale_and_point_scale_limits_are_named(dtype):
    x = torch.randn(4, 3, dtype=dtype)
    with pytest.raises(ValueError, match=r"lengthscale: .* is below .* the smallest"):
        gram(x, lengthscale=TINY_ELL[dtype] / 2)
    huge = torch.finfo(dtype).max ** 0.5 / 3  # squared distances overflow for D = 3
    with pytest.raises(ValueError, match=r"y: values up to .* too large .* squared distances"):
        gram(x, torch.full((2, 3), huge, dtype=dtype))
    assert torch.isfinite(gram(x, torch.full((2, 3), huge, dtype=dtype), kernel="laplacian")).all()
    with pytest.raises(ValueError, match=r"x: values up to .* too large .* distances would"):
        gram(torch.full((2, 3), torch.finfo(dtype).max / 3, dtype=dtype), kernel="laplacian")
    with pytest.raises(ValueError, match="x: contains NaN"):  # NaN still reported as NaN
        gram(torch.tensor([[float("nan"), 1e30]], dtype=dtype))


def test_reference_clamps_and_centres():
    # far from the origin and close together: the un-centred GEMM trick would go negative
    x = torch.tensor([[1e4, 1e4], [1e4 + 1e-3, 1e4]], dtype=torch.float32)
    k = gram_ref(x, x.clone(), "gaussian", 1e-3)
    assert torch.all(k <= 1) and torch.all(k >= 0)
    torch.testing.assert_close(k, exact_gram(x, x, "gaussian", 1e-3).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((torch.randn(3, 2), torch.randn(4, 3)), {}, ValueError, "y: feature dimension"),
        ((torch.randn(3),), {}, ValueError, "x: expected at least 2 dimensions"),
        ((torch.ones(3, 2, dtype=torch.int64),), {}, TypeError, "x: expected dtype"),
        ((torch.ones(3, 2, dtype=torch.bool),), {}, TypeError, "x: expected dtype"),
        ((torch.ones(3, 2, dtype=torch.complex64),), {}, TypeError, "x: expected dtype"),
        ((torch.randn(3, 2), torch.randn(4, 2).double()), {}, TypeError, "y: dtype"),
        ((torch.randn(3, 2),), {"lengthscale": 0.0}, ValueError, "lengthscale: must be positive"),
        ((torch.randn(3, 2),), {"lengthscale": -1.0}, ValueError, "lengthscale"),
        ((torch.randn(3, 2),), {"lengthscale": float("nan")}, ValueError, "lengthscale"),
        ((torch.randn(3, 2),), {"lengthscale": float("inf")}, ValueError, "lengthscale"),
        ((torch.randn(3, 2),), {"lengthscale": torch.ones(2)}, ValueError, "lengthscale"),
        ((torch.randn(3, 2),), {"lengthscale": "1"}, TypeError, "lengthscale"),
        ((torch.randn(3, 2),), {"kernel": "rbf"}, ValueError, "kernel: unknown kernel 'rbf'"),
        ((torch.tensor([[0.0, float("nan")]]),), {}, ValueError, "x: contains NaN"),
        ((torch.randn(3, 2), torch.tensor([[float("inf"), 0.0]])), {}, ValueError, "y: contains"),
        (([[0.0, 1.0]],), {}, TypeError, "x: expected a torch.Tensor"),
        ((torch.randn(2, 3, 2), torch.randn(4, 3, 2)), {}, ValueError, "batch dimensions"),
        ((torch.randn(3, 2),), {"backend": "cuda"}, ValueError, "unknown backend"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gram(*args, **kwargs)


def test_mixed_devices_are_refused():
    meta = torch.empty(3, 2, device="meta")
    with pytest.raises(ValueError, match="y: device"):
        gram(torch.randn(3, 2), meta.float())


def test_explicit_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="triton"):
        gram(torch.randn(3, 2), backend="triton")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FASTAMORT_BACKEND", "torch")
    with record_backends() as ran:
        gram(torch.randn(3, 2))
    assert ran == [("gram", "torch")]
    monkeypatch.setenv("FASTAMORT_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTAMORT_BACKEND"):
        gram(torch.randn(3, 2))


def test_auto_picks_cpp_on_cpu():
    if "cpp" not in fastamort.backend_report() or fastamort.backend_report()["cpp"] != "available":
        pytest.skip("extension not built")
    with record_backends() as ran:
        gram(torch.randn(3, 2))
    assert ran == [("gram", "cpp")]


@pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="extension not built")
def test_cpp_baseline_isa_matches():
    """The portable (non-AVX2) element-wise kernels, forced by FASTAMORT_ISA=baseline."""
    code = (
        "import torch, fastamort; from fastamort import _C;"
        "assert _C.simd_isa() == 'baseline', _C.simd_isa();"
        "from fastamort.ops.gram import gram_ref;"
        "g = torch.Generator().manual_seed(0);"
        "x = torch.randn(50, 6, generator=g, dtype=torch.float64);"
        "y = torch.randn(40, 6, generator=g, dtype=torch.float64);"
        "[torch.testing.assert_close(fastamort.gram(x, y, kernel=k, backend='cpp'),"
        " gram_ref(x, y, k, 1.0)) for k in fastamort.KERNEL_NAMES];"
        # the fused tile (16-byte vectors here), both dtypes, and Y = X exactly symmetric
        "assert _C.gram_route(263, 263, 17, 0) == 'fused';"
        "xs = [torch.randn(263, 17, generator=g, dtype=t) for t in (torch.float32, torch.float64)];"
        "ks = [fastamort.gram(v, lengthscale=3.0, backend='cpp') for v in xs];"
        "assert all(torch.equal(k, k.T) for k in ks);"
        "[torch.testing.assert_close(k, gram_ref(v.double(), None, 'gaussian', 3.0).to(v.dtype))"
        " for k, v in zip(ks, xs)]"
    )
    env = {**os.environ, "FASTAMORT_ISA": "baseline"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_lengthscale_beyond_float32_range_gives_ones(device, backend):
    """A finite lengthscale that float32 rounds to ∞ (≥ 3.4e38) was refused by the C++ backend
    as "must be positive and finite"; every backend now returns k = 1, zero gradients."""
    x = _points((5, 3), torch.float32, device, seed=12).requires_grad_()
    for ell in (1e39, torch.tensor(1e39, dtype=torch.float64, device=device)):
        k = gram(x, lengthscale=ell, backend=backend)
        assert torch.equal(k, torch.ones(5, 5, device=device))
        v = torch.ones(4, 1, device=device)
        kv = gram_matmul(x, x[:4], v, lengthscale=ell, backend=backend)
        assert torch.equal(kv, torch.full((5, 1), 4.0, device=device))
        (x_grad,) = torch.autograd.grad(k.sum() + kv.sum(), x)
        assert torch.equal(x_grad, torch.zeros_like(x))
    ell_t = torch.tensor(1e39, dtype=torch.float64, device=device, requires_grad=True)
    gram(x.detach(), lengthscale=ell_t, backend=backend).sum().backward()
    assert float(ell_t.grad) == 0.0


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_negative_bit_views_are_read_as_values(device, backend):
    """x.conj().imag of a complex x is a view with the negative bit set: the C++ backend
    failed on it ("Can't call numpy()")."""
    z = torch.randn(6, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(13))
    x = z.conj().imag.to(device)
    assert x.is_neg()
    plain = x.resolve_neg()
    v = torch._neg_view(-torch.ones(6, 2, dtype=torch.float64, device=device))
    torch.testing.assert_close(gram(x, backend=backend), gram(plain, backend=backend))
    torch.testing.assert_close(
        gram_matmul(x, x, v, backend=backend), gram_matmul(plain, plain, v.resolve_neg())
    )
    xr = x.clone().requires_grad_()  # clone: a plain tensor again, gradients flow as usual
    gram(torch._neg_view(-xr), backend=backend).sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_meta_tensors_give_shapes():
    """Meta tensors (shapes only) failed in Tensor.item(); gram and gram_matmul now give the
    output's shape, dtype and device (the torch backend: the compiled ones need data)."""
    x = torch.empty(2, 7, 3, device="meta", dtype=torch.float64)
    y = torch.empty(5, 3, device="meta", dtype=torch.float64)
    ell = torch.empty((), device="meta", dtype=torch.float64)
    k = gram(x, y, lengthscale=ell)
    assert k.shape == (2, 7, 5) and k.device.type == "meta" and k.dtype == torch.float64
    assert gram(x, kernel="laplacian").shape == (2, 7, 7)
    out = gram_matmul(x, y, torch.empty(2, 5, 4, device="meta", dtype=torch.float64))
    assert out.shape == (2, 7, 4)
    if fastamort.backend_report()["cpp"] == "available":
        with pytest.raises(BackendUnavailableError, match="CPU tensors only, got a meta tensor"):
            gram(x, backend="cpp")


@pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="extension not built")
def test_one_outlier_no_longer_corrupts_kernel_ridge():
    """Issue 23.2's reproduction: X = randn(200, 32) with X[7, 5] = 1e10 and an RBF KernelRidge
    differed from scikit-learn by 0.48 (the outlier dragged the mean centre away)."""
    sklearn = pytest.importorskip("sklearn.kernel_ridge")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 32, generator=gen, dtype=torch.float64)
    x[7, 5] = 1e10
    targets = torch.sin(x[:, 0]) + 0.1 * torch.randn(200, generator=gen, dtype=torch.float64)
    x_test = torch.randn(50, 32, generator=gen, dtype=torch.float64)
    ours = fastamort.KernelRidge(kernel="rbf", alpha=0.1, gamma=0.02).fit(x.numpy(), targets)
    theirs = sklearn.KernelRidge(kernel="rbf", alpha=0.1, gamma=0.02).fit(x.numpy(), targets)
    diff = abs(ours.predict(x_test.numpy()) - theirs.predict(x_test.numpy())).max()
    assert diff < 1e-10
    # and the Gram matrices themselves, in both dtypes, every compiled route
    for dtype, outlier in ((torch.float64, 1e10), (torch.float32, 1e5)):
        xd = x.to(dtype)
        xd[7, 5] = outlier
        truth = exact_gram(xd, None, "gaussian", 5.0)
        assert max_abs_err(gram(xd, lengthscale=5.0, backend="cpp"), truth) <= 4 * FLOOR[dtype]
