"""normal_matmul: K(x, c)ᵀ·diag(w)·(K(x, c)·v + y) without storing K, on every backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import BACKEND_PARAMS, FLOOR, exact_gram, max_abs_err

import fastamort
from fastamort import record_backends
from fastamort.ops.kernel_math import KERNEL_NAMES
from fastamort.ops.normal_matmul import normal_matmul, normal_matmul_ref

DTYPES = [torch.float32, torch.float64]
# (n, m, D, p): 1s; primes; m = 17 and 33 just past the 16- and 32-column register blocks of the
# C++ distances (2 vectors of float32 / float64 under AVX2); n = 1031 (prime, past 1024, not a
# multiple of the 4-row blocks) and 258 (4·64 + 2: a partial last block).
SHAPES = [(1, 1, 1, 1), (7, 5, 3, 3), (37, 17, 5, 2), (1031, 41, 8, 1), (258, 33, 2, 3)]
TRITON_SHAPES = [(1, 1, 1, 1), (7, 5, 3, 3), (37, 17, 5, 2)]
CPP = pytest.mark.skipif(
    fastamort.backend_report()["cpp"] != "available", reason="extension not built"
)


def _rand(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def _problem(n, m, d, p, dtype, device):
    x = _rand((n, d), dtype, device, 1) + 2.0
    c = _rand((m, d), dtype, device, 2) + 2.0
    v = _rand((m, p), torch.float64, device, 3)
    y = _rand((n, p), torch.float64, device, 4)
    w = _rand((n,), torch.float64, device, 5).abs()
    return x, c, v, y, w


def _truth(x, c, v, y, w, kernel, ell):
    """float64 ground truth: kernel values by direct differences, dense products."""
    k = exact_gram(x.cpu(), c.cpu(), kernel, ell)
    t = torch.zeros(x.shape[0], (v if v is not None else y).shape[1], dtype=torch.float64)
    if v is not None:
        t += k @ v.cpu()
    if y is not None:
        t += y.cpu()
    if w is not None:
        t *= w.cpu()[:, None]
    return k.mT @ t


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("operands", ["v", "y", "v+y+w"])
def test_matches_float64_ground_truth(device, backend, dtype, kernel, operands):
    for n, m, d, p in TRITON_SHAPES if backend == "triton" else SHAPES:
        ell = 0.8 * d**0.5
        x, c, v, y, w = _problem(n, m, d, p, dtype, device)
        v = v if "v" in operands else None
        y = y if "y" in operands else None
        w = w if "w" in operands else None
        truth = _truth(x, c, v, y, w, kernel, ell)
        ref_same = normal_matmul_ref(x, c, v, y, w, kernel, ell)
        with record_backends() as ran:
            out = normal_matmul(
                x, c, v, y=y, weights=w, kernel=kernel, lengthscale=ell, backend=backend
            )
        assert ("normal_matmul", backend) in ran
        if backend != "triton":  # triton runs as two gram_matmul passes
            assert ran == [("normal_matmul", backend)]
        assert out.shape == (m, p) and out.dtype == torch.float64
        # sums of n·m products of kernel values (≤ 1) and operands: the floor scales with them
        scale = n * (m * float(v.abs().max()) if v is not None else 0.0)
        scale += n * (float(y.abs().max()) if y is not None else 0.0)
        floor = FLOOR[dtype] * scale
        assert max_abs_err(out, truth) <= 2 * max_abs_err(ref_same, truth) + floor, (n, m, d, p)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_vectors_in_vectors_out_and_the_operands_dtype(device, backend):
    x, c, v, y, w = _problem(9, 4, 2, 1, torch.float32, device)
    out = normal_matmul(x, c, v[:, 0].float(), y=y[:, 0].float(), weights=w, backend=backend)
    assert out.shape == (4,) and out.dtype == torch.float32
    ref = normal_matmul_ref(x, c, v, y, w)[:, 0]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_columns_together_equal_columns_one_by_one(device, backend):
    x, c, v, y, w = _problem(67, 19, 4, 3, torch.float64, device)
    together = normal_matmul(x, c, v, y=y, weights=w, backend=backend)
    for q in range(3):
        alone = normal_matmul(x, c, v[:, q], y=y[:, q], weights=w, backend=backend)
        torch.testing.assert_close(together[:, q], alone, rtol=1e-12, atol=1e-12)


@CPP
def test_cpp_products_isa_follows_the_gram_engine():
    from fastamort import _C

    assert _C.nystrom_products_isa() == _C.simd_isa()


@CPP
def test_cpp_baseline_isa_matches():
    """The portable copy of the float64 products and distances (FASTAMORT_ISA=baseline)."""
    code = """
import torch
from fastamort import _C
from fastamort.ops.normal_matmul import normal_matmul, normal_matmul_ref
assert _C.nystrom_products_isa() == "baseline", _C.nystrom_products_isa()
g = torch.Generator().manual_seed(0)
v = torch.randn(37, 2, generator=g, dtype=torch.float64)
y = torch.randn(258, 2, generator=g, dtype=torch.float64)
for t, rtol, atol in ((torch.float32, 1e-5, 1e-4), (torch.float64, 1e-11, 1e-10)):
    x, c = torch.randn(258, 5, generator=g).to(t), torch.randn(37, 5, generator=g).to(t)
    for k in ("gaussian", "laplacian"):
        out = normal_matmul(x, c, v, y=y, kernel=k, lengthscale=2.0, backend="cpp")
        ref = normal_matmul_ref(x, c, v, y, None, k, 2.0)
        torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
"""
    env = {**os.environ, "FASTAMORT_ISA": "baseline"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=CPP)])
def test_empty_sides(backend):
    x, c = torch.randn(0, 3), torch.randn(4, 3)
    out = normal_matmul(x, c, torch.randn(4, 2), backend=backend)
    assert out.shape == (4, 2) and not out.any()
    out = normal_matmul(torch.randn(5, 3), torch.randn(0, 3), torch.randn(0, 2), backend=backend)
    assert out.shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"v": None}, ValueError, "at least one"),
        ({"v": torch.randn(5, 2)}, ValueError, r"v: expected shape \(4, p\)"),
        ({"v": torch.randn(4, 2, 1)}, ValueError, "v: expected shape"),
        ({"y": torch.randn(9)}, ValueError, r"y: expected shape \(8, p\)"),
        ({"y": torch.randn(8, 3)}, ValueError, "same number of columns"),
        ({"weights": torch.randn(8, 1)}, ValueError, r"weights: expected shape \(8,\)"),
        ({"v": torch.full((4,), float("nan"))}, ValueError, "v: contains NaN"),
        ({"weights": torch.tensor([1.0] * 7 + [float("inf")])}, ValueError, "weights: contains"),
        ({"v": torch.ones(4, dtype=torch.int64)}, TypeError, "v: expected dtype float32"),
        ({"kernel": "rbf"}, ValueError, "kernel: unknown kernel 'rbf'"),
        ({"lengthscale": -1.0}, ValueError, "lengthscale: must be positive"),
    ],
)
def test_clear_errors(kwargs, error, match):
    args = {"v": torch.randn(4)} | kwargs
    v = args.pop("v")
    with pytest.raises(error, match=match):
        normal_matmul(torch.randn(8, 3), torch.randn(4, 3), v, **args)


def test_clear_errors_for_points():
    with pytest.raises(TypeError, match=r"centres: dtype torch\.float64 differs from x's"):
        normal_matmul(torch.randn(8, 3), torch.randn(4, 3, dtype=torch.float64), torch.randn(4))
    with pytest.raises(ValueError, match="centres: feature dimension 2 differs"):
        normal_matmul(torch.randn(8, 3), torch.randn(4, 2), torch.randn(4))
    with pytest.raises(ValueError, match=r"x: expected shape \(n, D\)"):
        normal_matmul(torch.randn(2, 8, 3), torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match="x: contains NaN"):
        normal_matmul(torch.full((8, 3), float("nan")), torch.randn(4, 3), torch.randn(4))


def test_refuses_to_drop_gradients():
    x = torch.randn(8, 3, requires_grad=True)
    with pytest.raises(ValueError, match="not differentiable"):
        normal_matmul(x, torch.randn(4, 3), torch.randn(4))
    with torch.no_grad():
        assert normal_matmul(x, torch.randn(4, 3), torch.randn(4)).shape == (4,)
