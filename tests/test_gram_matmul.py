"""gram_matmul: K(x, y) @ v without storing K, on every backend, with autograd."""

from __future__ import annotations

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
from fastamort import gram_matmul, record_backends
from fastamort.ops.gram_matmul import gram_matmul_ref
from fastamort.ops.kernel_math import KERNEL_NAMES

DTYPES = [torch.float32, torch.float64]
# (M, N, D, P): 1s, primes, D both sides of the direct/GEMM switch, N past the 1024-column
# tiles of the C++ direct route and the 256 blocks of its GEMM route, P = 16 and 17.
SHAPES = [(1, 1, 1, 1), (7, 5, 3, 3), (37, 41, 5, 17), (300, 1100, 3, 2), (65, 300, 40, 16)]
TRITON_SHAPES = [(1, 1, 1, 1), (7, 5, 3, 3), (37, 41, 5, 17), (33, 70, 20, 16)]


def _rand(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_matches_float64_ground_truth(device, backend, dtype, kernel):
    for m, n, d, p in TRITON_SHAPES if backend == "triton" else SHAPES:
        ell = 0.8 * d**0.5
        x = _rand((m, d), dtype, device, 1) + 2.0
        y = _rand((n, d), dtype, device, 2) + 2.0
        v = _rand((n, p), dtype, device, 3)
        truth = exact_gram(x, y, kernel, ell) @ v.double().cpu()
        ref_same = gram_matmul_ref(x, y, v, kernel, ell)
        with record_backends() as ran:
            out = gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend=backend)
        assert ran == [("gram_matmul", backend)]
        assert out.shape == (m, p) and out.dtype == dtype
        # the products sum N terms: the floor scales with the size of the sums
        floor = FLOOR[dtype] * n * float(v.abs().max())
        assert max_abs_err(out, truth) <= 2 * max_abs_err(ref_same, truth) + floor, (m, n, d, p)


@pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="extension not built")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["gaussian", "matern12", "matern32", "matern52"])
def test_cpp_tiled_routes_match_ground_truth(dtype, kernel):
    shapes = [(m, n, d) for m, n, d, _ in CPP_ROUTE_SHAPES]
    shapes += [(m, None, d) for m, d, _ in CPP_ROUTE_SYMMETRIC]
    for m, n, d in shapes:
        ell = 0.8 * d**0.5
        x = _rand((m, d), dtype, "cpu", 1) + 2.0
        y = None if n is None else _rand((n, d), dtype, "cpu", 2) + 2.0
        v = _rand((m if n is None else n, 16), dtype, "cpu", 3)
        truth = exact_gram(x, y, kernel, ell) @ v.double()
        ref_same = gram_matmul_ref(x, y, v, kernel, ell)
        out = gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend="cpp")
        floor = FLOOR[dtype] * v.shape[0] * float(v.abs().max())
        assert max_abs_err(out, truth) <= 2 * max_abs_err(ref_same, truth) + floor, (m, n, d)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_symmetric_vector_and_batched(device, backend):
    x = _rand((3, 9, 4), torch.float64, device, 4)
    v = _rand((3, 9), torch.float64, device, 5)
    out = gram_matmul(x, None, v, kernel="matern12", lengthscale=1.1, backend=backend)
    assert out.shape == (3, 9)
    looped = torch.stack(
        [
            gram_matmul(x[i], None, v[i], kernel="matern12", lengthscale=1.1, backend=backend)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(out, looped)
    truth = torch.einsum("bij,bj->bi", exact_gram(x.cpu(), None, "matern12", 1.1), v.cpu())
    torch.testing.assert_close(out.cpu(), truth)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
def test_gradcheck_float64(device, backend, kernel, symmetric):
    x = _rand((6, 3), torch.float64, device, 6).requires_grad_()
    y = _rand((5, 3), torch.float64, device, 7).requires_grad_()
    v = _rand((6 if symmetric else 5, 2), torch.float64, device, 8).requires_grad_()
    ell = torch.tensor(0.9, dtype=torch.float64, device=device, requires_grad=True)
    if symmetric:

        def fn(x, v, ell):
            return gram_matmul(x, None, v, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, v, ell)
    else:

        def fn(x, y, v, ell):
            return gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend=backend)

        inputs = (x, y, v, ell)
    with record_backends() as ran:
        assert gradcheck_on(backend, fn, inputs, eps=1e-6, atol=1e-7)
    if backend != "torch":
        assert ("gram_matmul.backward", backend) in ran


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_empty_and_errors(device, backend):
    x = _rand((4, 2), torch.float64, device, 9)
    assert gram_matmul(
        x, x[:0], torch.zeros(0, 3, dtype=torch.float64, device=device), backend=backend
    ).shape == (4, 3)
    assert gram_matmul(
        x[:0], x, torch.ones(4, 3, dtype=torch.float64, device=device), backend=backend
    ).shape == (0, 3)
    with pytest.raises(ValueError, match="v: expected shape"):
        gram_matmul(x, x, torch.ones(5, 3, dtype=torch.float64, device=device), backend=backend)
    with pytest.raises(ValueError, match="v: contains NaN"):
        gram_matmul(
            x,
            None,
            torch.full((4, 1), float("nan"), dtype=torch.float64, device=device),
            backend=backend,
        )
    with pytest.raises(TypeError, match="v: dtype"):
        gram_matmul(x, None, torch.ones(4, 1, device=device), backend=backend)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures /proc/self/status")
def test_cpp_never_stores_the_gram_matrix():
    from fastamort.benchmarks._harness import peak_extra_memory

    pytest.importorskip("fastamort._C")
    m = n = 3000
    x, y = torch.randn(m, 8, dtype=torch.float64), torch.randn(n, 8, dtype=torch.float64)
    v = torch.randn(n, 4, dtype=torch.float64)
    gram_matmul(x, y, v, backend="cpp")  # warm-up
    fused = peak_extra_memory(lambda: gram_matmul(x, y, v, backend="cpp"), torch.device("cpu"))
    if fused is None:
        pytest.skip("no /proc/self/clear_refs")
    gram_bytes = m * n * 8
    assert fused < gram_bytes / 4, f"peak extra memory {fused} B vs K's {gram_bytes} B"
