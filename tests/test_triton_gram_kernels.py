"""Triton Gram kernels (``fastamort.ops._triton_gram``) against a float64 torch reference.

Runs on CUDA, or on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``); skipped
otherwise. The reference uses direct differences (no GEMM trick) and autograd for the backward.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import replay_gpu_autotuning

from fastamort.ops.kernel_math import KERNEL_IDS, KERNEL_NAMES, kernel_from_s

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (_INTERPRET or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
tg = pytest.importorskip("fastamort.ops._triton_gram")

pytestmark = pytest.mark.triton

DEVICE = "cpu" if _INTERPRET else "cuda"
DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}

# (B, M, N, D): a single point, primes, one past a 32 block (3 D chunks of 16), a wide D.
SHAPES = {
    "one": (1, 1, 1, 1),
    "primes": (1, 37, 41, 5),
    "past_block": (1, 33, 33, 33),
    "wide_d": (1, 9, 12, 100),
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _lengthscale(kernel: str, d: int, dtype: torch.dtype) -> torch.Tensor:
    """A lengthscale that keeps s = O(1) for standard normal points."""
    value = 0.8 * d if kernel == "laplacian" else 0.8 * math.sqrt(d)
    return torch.tensor(value, dtype=dtype, device=DEVICE)


def _points(shape: tuple[int, int, int, int], dtype: torch.dtype, symmetric: bool, seed: int = 0):
    b, m, n, d = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m, d, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    y = None if symmetric else torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    return x, (None if y is None else y.to(DEVICE, dtype))


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)


def _ref_s(x: torch.Tensor, y: torch.Tensor, kernel: str, ell: torch.Tensor) -> torch.Tensor:
    diff = x[:, :, None] - y[:, None]
    if kernel == "laplacian":
        return diff.abs().sum(-1) / ell
    return diff.pow(2).sum(-1) / (ell * ell)


def _ref_gram(x, y, kernel, ell) -> torch.Tensor:
    """float64 reference K(x, y) (y None: K(x, x)) by direct differences."""
    x64 = x.double()
    y64 = x64 if y is None else y.double()
    return kernel_from_s(_ref_s(x64, y64, kernel, ell.double()), kernel)


def _ref_grads(x, y, g: torch.Tensor, kernel: str, ell: torch.Tensor):
    """float64 autograd gradients of sum(g * K) and the scale sum|g · dK/dℓ| (for dℓ)."""
    x64 = x.detach().double().requires_grad_()
    y64 = x64 if y is None else y.detach().double().requires_grad_()
    e64 = ell.detach().double().requires_grad_()
    k = kernel_from_s(_ref_s(x64, y64, kernel, e64), kernel)
    inputs = [x64, e64] if y is None else [x64, y64, e64]
    grads = torch.autograd.grad((g.double() * k).sum(), inputs, retain_graph=True)
    # dk/dℓ >= 0 for every kernel here, so this is sum |g · dk/dℓ|: the scale of dℓ's rounding
    (abs_dell,) = torch.autograd.grad((g.double().abs() * k).sum(), [e64])
    scale = max(float(abs_dell), 1e-300)
    dx = grads[0]
    dy = None if y is None else grads[1]
    return dx, dy, grads[-1], scale


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale=None) -> None:
    """max |actual − expected| <= rtol · scale (default: max |expected|)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all()
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    if scale is None:
        scale = expected.double().abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale, f"error {err:.3e} > {rtol:.0e} x scale {scale:.3e}"


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_interpreter_flag_and_single_config() -> None:
    assert tg.INTERPRETER == _INTERPRET
    if _INTERPRET:
        for table in (tg._gram_fwd, tg._gram_matmul, tg._gram_bwd):
            assert all(len(tuner.configs) == 1 for tuner in table.values())


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_gram_forward_matmul_backward(kernel, dtype, symmetric, shape_name) -> None:
    shape = SHAPES[shape_name]
    b, m, n, d = shape
    n = m if symmetric else n
    kid, rtol = KERNEL_IDS[kernel], RTOL[dtype]
    x, y = _points(shape, dtype, symmetric)
    ell = _lengthscale(kernel, d, dtype)

    # gram_forward
    k = tg.gram_forward(x, y, kid, ell)
    ref = _ref_gram(x, y, kernel, ell)
    assert k.dtype == dtype and k.shape == (b, m, n)
    _assert_close(k, ref, rtol)
    if symmetric:
        assert torch.equal(k, k.mT)
        assert torch.equal(
            k.diagonal(dim1=-2, dim2=-1), torch.ones(b, m, dtype=dtype, device=DEVICE)
        )

    # gram_matmul_forward, K @ v for several widths
    for p in (1, 3, 17):
        v = _randn(b, n, p, dtype=dtype, seed=p)
        out = tg.gram_matmul_forward(x, y, v, kid, ell)
        assert out.dtype == dtype and out.shape == (b, m, p)
        _assert_close(
            out, ref @ v.double(), rtol, scale=(ref.abs() @ v.double().abs()).max().item()
        )

    # gram_backward, G given (gram) and G = grad @ vᵀ (gram_matmul)
    p = 17
    grad_k = _randn(b, m, n, dtype=dtype, seed=1)
    grad_p, v = _randn(b, m, p, dtype=dtype, seed=2), _randn(b, n, p, dtype=dtype, seed=3)
    for grad, vv, g in ((grad_k, None, grad_k), (grad_p, v, grad_p.double() @ v.double().mT)):
        dx, dy, dell = tg.gram_backward(x, y, grad, vv, kid, ell)
        rdx, rdy, rdell, scale = _ref_grads(x, y, g, kernel, ell)
        assert dx.dtype == dtype and dell.dtype == dtype and dell.dim() == 0
        _assert_close(dx, rdx, rtol, scale=max(rdx.abs().max().item(), 1e-300))
        if symmetric:
            assert dy is None
        else:
            _assert_close(dy, rdy, rtol, scale=max(rdy.abs().max().item(), 1e-300))
        _assert_close(dell, rdell, rtol, scale=scale)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
def test_wide_p_blocks(kernel, symmetric) -> None:
    """P = 70: two P blocks in gram_matmul_forward, three P chunks in the backward."""
    dtype, shape, p = torch.float64, (1, 20, 35, 4), 70
    b, m, n, d = shape
    n = m if symmetric else n
    kid = KERNEL_IDS[kernel]
    x, y = _points(shape, dtype, symmetric, seed=5)
    ell = _lengthscale(kernel, d, dtype)
    v, grad = _randn(b, n, p, dtype=dtype, seed=6), _randn(b, m, p, dtype=dtype, seed=7)
    ref = _ref_gram(x, y, kernel, ell)
    _assert_close(tg.gram_matmul_forward(x, y, v, kid, ell), ref @ v, RTOL[dtype])
    dx, dy, dell = tg.gram_backward(x, y, grad, v, kid, ell)
    rdx, rdy, rdell, scale = _ref_grads(x, y, grad @ v.mT, kernel, ell)
    _assert_close(dx, rdx, RTOL[dtype])
    if not symmetric:
        _assert_close(dy, rdy, RTOL[dtype])
    _assert_close(dell, rdell, RTOL[dtype], scale=scale)


@pytest.mark.parametrize("symmetric", [False, True], ids=["xy", "xx"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_batch_equals_loop(kernel, symmetric) -> None:
    """B = 2 gives, bit for bit, the results of two B = 1 calls (dℓ: their sum)."""
    dtype, shape, p = torch.float32, (2, 35, 33, 6), 5
    b, m, n, d = shape
    n = m if symmetric else n
    kid = KERNEL_IDS[kernel]
    x, y = _points(shape, dtype, symmetric, seed=11)
    ell = _lengthscale(kernel, d, dtype)
    v, grad = _randn(b, n, p, dtype=dtype, seed=12), _randn(b, m, n, dtype=dtype, seed=13)

    k = tg.gram_forward(x, y, kid, ell)
    out = tg.gram_matmul_forward(x, y, v, kid, ell)
    dx, dy, dell = tg.gram_backward(x, y, grad, None, kid, ell)
    dell_sum = torch.zeros((), dtype=dtype, device=DEVICE)
    for i in range(b):
        xi = x[i : i + 1]
        yi = None if y is None else y[i : i + 1]
        assert torch.equal(k[i : i + 1], tg.gram_forward(xi, yi, kid, ell))
        assert torch.equal(out[i : i + 1], tg.gram_matmul_forward(xi, yi, v[i : i + 1], kid, ell))
        dxi, dyi, delli = tg.gram_backward(xi, yi, grad[i : i + 1], None, kid, ell)
        assert torch.equal(dx[i : i + 1], dxi)
        if y is not None:
            assert torch.equal(dy[i : i + 1], dyi)
        dell_sum = dell_sum + delli
    torch.testing.assert_close(dell, dell_sum, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["matern52", "laplacian"])
def test_non_contiguous_inputs(kernel) -> None:
    """Strided views give the results of their contiguous copies."""
    dtype, kid = torch.float64, KERNEL_IDS[kernel]
    x = _randn(1, 7, 30, dtype=dtype, seed=21).mT  # (1, 30, 7), column-major rows
    y = _randn(1, 7, 20, dtype=dtype, seed=22).mT  # (1, 20, 7)
    v = _randn(1, 4, 20, dtype=dtype, seed=23).mT  # (1, 20, 4)
    grad = _randn(1, 20, 30, dtype=dtype, seed=24).mT  # (1, 30, 20)
    ell = _lengthscale(kernel, 7, dtype)
    xc, yc, vc, gc = x.contiguous(), y.contiguous(), v.contiguous(), grad.contiguous()
    assert torch.equal(tg.gram_forward(x, y, kid, ell), tg.gram_forward(xc, yc, kid, ell))
    assert torch.equal(
        tg.gram_matmul_forward(x, y, v, kid, ell), tg.gram_matmul_forward(xc, yc, vc, kid, ell)
    )
    for a, b in zip(
        tg.gram_backward(x, y, grad, None, kid, ell),
        tg.gram_backward(xc, yc, gc, None, kid, ell),
        strict=True,
    ):
        assert torch.equal(a, b)


# per launcher: its autotuners (one per kernel family) and their GPU config tables
TUNERS = {"gram": tg._gram_fwd, "matmul": tg._gram_matmul, "backward": tg._gram_bwd}
GPU_CONFIGS = {
    "gram": tg._GRAM_CONFIGS,
    "matmul": tg._MATMUL_CONFIGS,
    "backward": tg._BACKWARD_CONFIGS,
}


def _float64_tuner(table: str, family: str):
    """The autotuner that a float64 launch of ``table``'s ``family`` goes through: float64
    Euclidean products have their own wrapper (``euclid64``); a config forced onto it runs
    whichever table it comes from."""
    if table == "matmul" and family == "euclid":
        family = "euclid64"
    return TUNERS[table][family]


def _gpu_configs() -> list:
    """(table name, family, config) for every autotune config the kernels get on a GPU."""
    return [
        pytest.param(name, family, cfg, id=f"{name}-{family}-{i}")
        for name, table in GPU_CONFIGS.items()
        for family, configs in table.items()
        for i, cfg in enumerate(configs)
    ]


@pytest.mark.parametrize(("table", "family", "config"), _gpu_configs())
def test_every_gpu_config_is_right(table, family, config, monkeypatch) -> None:
    """Each GPU autotune config (tile shape, warps, stages), forced as the only one, gives the
    reference's results: the interpreter otherwise runs only its own single config."""
    kernel = "laplacian" if family == "l1" else "matern52"
    kid, dtype, shape = KERNEL_IDS[kernel], torch.float64, (1, 37, 70, 5)
    monkeypatch.setattr(_float64_tuner(table, family), "configs", [config])
    x, y = _points(shape, dtype, symmetric=False, seed=31)
    ell = _lengthscale(kernel, shape[-1], dtype)
    ref = _ref_gram(x, y, kernel, ell)
    if table == "gram":
        _assert_close(tg.gram_forward(x, y, kid, ell), ref, RTOL[dtype])
        kxx = tg.gram_forward(x, None, kid, ell)
        assert torch.equal(kxx, kxx.mT)
        _assert_close(kxx, _ref_gram(x, None, kernel, ell), RTOL[dtype])
    elif table == "matmul":
        v = _randn(1, 70, 17, dtype=dtype, seed=32)
        _assert_close(tg.gram_matmul_forward(x, y, v, kid, ell), ref @ v, RTOL[dtype])
    else:
        grad, v = _randn(1, 37, 17, dtype=dtype, seed=33), _randn(1, 70, 17, dtype=dtype, seed=34)
        dx, dy, dell = tg.gram_backward(x, y, grad, v, kid, ell)
        rdx, rdy, rdell, scale = _ref_grads(x, y, grad @ v.mT, kernel, ell)
        _assert_close(dx, rdx, RTOL[dtype])
        _assert_close(dy, rdy, RTOL[dtype])
        _assert_close(dell, rdell, RTOL[dtype], scale=scale)


@pytest.mark.skipif(not _INTERPRET, reason="replays the GPU autotuner's sequence on the CPU")
@pytest.mark.parametrize("family", ["euclid", "l1"])
@pytest.mark.parametrize("table", ["gram", "matmul", "backward"])
def test_gpu_autotuning_replay(table, family, monkeypatch) -> None:
    """On a GPU the autotuner runs every config on the same buffers, then the chosen one:
    nothing a config with more row blocks wrote (the backward's dℓ partial sums) may survive
    into the result. Failed for the backward before its ``reset_to_zero``."""
    kernel = "laplacian" if family == "l1" else "gaussian"
    kid, dtype, shape = KERNEL_IDS[kernel], torch.float64, (1, 37, 20, 3)
    bk = 8 if family == "l1" else 16
    configs = [tg._cfg(16, 16, bk, 4, 1), tg._cfg(64, 64, bk, 4, 1)]  # 3 row blocks, then 1
    replay_gpu_autotuning(monkeypatch, _float64_tuner(table, family), configs)
    x, y = _points(shape, dtype, symmetric=False, seed=41)
    ell = _lengthscale(kernel, shape[-1], dtype)
    ref = _ref_gram(x, y, kernel, ell)
    if table == "gram":
        _assert_close(tg.gram_forward(x, y, kid, ell), ref, RTOL[dtype])
    elif table == "matmul":
        v = _randn(1, 20, 5, dtype=dtype, seed=43)
        _assert_close(tg.gram_matmul_forward(x, y, v, kid, ell), ref @ v, RTOL[dtype])
    else:
        grad = _randn(1, 37, 20, dtype=dtype, seed=42)
        dx, dy, dell = tg.gram_backward(x, y, grad, None, kid, ell)
        rdx, rdy, rdell, scale = _ref_grads(x, y, grad, kernel, ell)
        _assert_close(dx, rdx, RTOL[dtype])
        _assert_close(dy, rdy, RTOL[dtype])
        _assert_close(dell, rdell, RTOL[dtype], scale=scale)
    assert _float64_tuner(table, family).best_config is configs[1]
