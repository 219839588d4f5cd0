"""Triton Cholesky / ridge kernels (``fastamort.ops._triton_ridge``) against float64 torch.

Runs on CUDA, or on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``); skipped
otherwise. Every factorisation method is forced once (``small``, ``blocked``, ``cusolver``);
batches are small because the interpreter runs one program at a time.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import replay_gpu_autotuning

from fastamort.ops.kernel_math import KERNEL_IDS, KERNEL_NAMES, kernel_from_s

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (_INTERPRET or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
tr = pytest.importorskip("fastamort.ops._triton_ridge")

pytestmark = pytest.mark.triton

DEVICE = "cpu" if _INTERPRET else "cuda"
DTYPES = [torch.float32, torch.float64]
# relative tolerances: residuals of L Lᵀ and of the solve, and the distance to torch's result
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}
# 1, 2, primes, one past a power of two, past one (33) and two (67) blocks of 32
SIZES = [1, 2, 7, 16, 17, 33, 67]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(b: int, n: int, seed: int) -> torch.Tensor:
    """(b, n, n) float64 symmetric positive definite, eigenvalues in about [0.1, 5]."""
    a = torch.randn(b, n, n, generator=_gen(seed), dtype=torch.float64)
    return a @ a.mT / max(n, 1) + 0.1 * torch.eye(n, dtype=torch.float64)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _with_garbage_upper(a: torch.Tensor) -> torch.Tensor:
    """``a``'s lower triangle, 1e3 above it: the kernels must never read the upper part."""
    return a.tril() + torch.triu(torch.full_like(a, 1e3), diagonal=1)


def _shifted(a: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], dtype=torch.float64)
    return a.double().cpu() + shift.double().cpu()[:, None, None] * eye


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double().cpu()
    err = (actual.double().cpu() - expected).abs().max()
    return float(err / expected.abs().max().clamp_min(1e-300))


def _dev(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(DEVICE, dtype)


def _check_factor(lower, info, a64, shift, dtype, n):
    """Exact zeros above the diagonal, L Lᵀ = a + shift·I, and L = torch's factor in float64."""
    assert lower.dtype == dtype and lower.shape == a64.shape
    assert info.dtype == torch.int64 and torch.equal(info.cpu(), torch.zeros_like(info.cpu()))
    assert torch.equal(lower, lower.tril()), "strict upper triangle must be exactly zero"
    target = _shifted(a64, shift)
    l64 = lower.double().cpu()
    assert _rel_err(l64 @ l64.mT, target) <= RTOL[dtype] * max(1, n / 10), n
    assert _rel_err(l64, torch.linalg.cholesky(target)) <= 100 * RTOL[dtype], n


# --------------------------------------------------------------------------------------------
# factor / solve / ridge
# --------------------------------------------------------------------------------------------


def test_interpreter_single_config_and_dispatch() -> None:
    if _INTERPRET:
        for tuner in (tr._factor_small, tr._ridge_small, tr._solve_small, tr._krr_fused):
            assert len(tuner.configs) == 1
    cuda = torch.device("cuda")
    assert tr._choose(tr.SMALL_MAX_N, cuda, "auto") == "small"
    assert tr._choose(tr.SMALL_MAX_N + 1, cuda, "auto") == "blocked"
    big = "blocked" if _INTERPRET else "cusolver"  # the interpreter always runs Triton
    assert tr._choose(tr.CUSOLVER_MIN_N, cuda, "auto") == big
    assert tr._choose(10_000, torch.device("cpu"), "auto") == "blocked"
    with pytest.raises(ValueError, match="method"):
        tr._choose(4, cuda, "lapack")
    with pytest.raises(ValueError, match="method='small'"):
        tr._choose(tr.SMALL_LIMIT_N + 1, cuda, "small")


@pytest.mark.parametrize("method", ["small", "blocked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
def test_factor_solve_ridge_invariants(dtype, method) -> None:
    """For each n: L Lᵀ = a + shift·I, (k + shift·I) x = b and agreement with float64 torch;
    B = 2 with a different shift per member, only the lower triangle of the input read."""
    for i, n in enumerate(SIZES):
        if method == "small" and n > tr.SMALL_LIMIT_N:
            continue
        p = 1 if i % 2 else 3
        a64 = _spd(2, n, seed=n) - 0.05 * torch.eye(n, dtype=torch.float64)
        shift = torch.tensor([0.0, 0.7], dtype=torch.float64)
        a = _dev(_with_garbage_upper(a64), dtype)
        b64 = _randn(2, n, p, seed=n + 1)
        b = _dev(b64, dtype)
        shift_d = shift.to(DEVICE)
        lower, info = tr.factor(a, shift_d, method=method)
        _check_factor(lower, info, a64, shift, dtype, n)

        x_ref = torch.linalg.solve(_shifted(a64, shift), b64)
        x = tr.solve(lower, b)
        assert x.dtype == dtype and x.shape == (2, n, p)
        assert _rel_err(x, x_ref) <= 100 * RTOL[dtype] * max(1, n / 10), (n, p)
        xr, lr, ir = tr.ridge(a, b, shift_d, method=method)
        assert torch.equal(lr, lower) and torch.equal(ir, info)
        residual = _shifted(a64, shift) @ xr.double().cpu() - b64
        assert float(residual.abs().max() / b64.abs().max()) <= 10 * RTOL[dtype] * max(1, n / 10)
        assert _rel_err(xr, x_ref) <= 100 * RTOL[dtype] * max(1, n / 10), (n, p)


@pytest.mark.parametrize(("method", "n"), [("small", 17), ("blocked", 35), ("cusolver", 9)])
def test_batch_equals_loop(method, n) -> None:
    """B = 5 gives the results of five B = 1 calls (per-member shift)."""
    dtype, p, batch = torch.float32, 3, 5
    a = _dev(_spd(batch, n, seed=3), dtype)
    b = _dev(_randn(batch, n, p, seed=4), dtype)
    shift = torch.linspace(0.0, 2.0, batch, dtype=torch.float64, device=DEVICE)
    x, lower, info = tr.ridge(a, b, shift, method=method, block=16)
    _check_factor(lower, info, a.double().cpu(), shift, dtype, n)
    # Bitwise where Triton computes: cuSOLVER may pick another algorithm for a batch of one
    # (potrf vs batched), and torch's triangular solves (n > SMALL_MAX_N) treat a batch of
    # transposed factors differently from a single one.
    exact_l = method != "cusolver" or DEVICE == "cpu"
    exact_x = exact_l and n <= tr.SMALL_MAX_N
    for i in range(batch):
        xi, li, ii = tr.ridge(a[i : i + 1], b[i : i + 1], shift[i : i + 1], method=method, block=16)
        assert torch.equal(info[i : i + 1], ii)
        if exact_l:
            assert torch.equal(lower[i : i + 1], li)
        if exact_x:
            assert torch.equal(x[i : i + 1], xi)
        torch.testing.assert_close(x[i : i + 1], xi, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("method", "n", "bad"), [("small", 12, 5), ("blocked", 40, 37)])
def test_failed_members_flagged_others_untouched(method, n, bad) -> None:
    """Indefinite (fails exactly at pivot ``bad``), rank-deficient PSD (fails with shift 0) and
    non-finite members get info > 0 and NaN solutions; the good members are bit-identical to
    factoring them alone."""
    dtype = torch.float64
    a = _spd(5, n, seed=7)
    a[1, bad, bad] -= a[1, bad, bad] + 1.0  # Schur complement at `bad` becomes negative
    r = n // 2
    a[2] = 0.0  # PSD of rank r: [[SPD, 0], [0, 0]], first zero pivot at r
    a[2, :r, :r] = _spd(1, r, seed=8)[0]
    a[3, n - 1, n - 1] = float("inf")
    a, b = _dev(a, dtype), _dev(_randn(5, n, 2, seed=9), dtype)
    shift = torch.zeros(5, dtype=torch.float64, device=DEVICE)
    x, lower, info = tr.ridge(a, b, shift, method=method, block=32)
    assert info.tolist() == [0, bad + 1, r + 1, n, 0]
    assert torch.isnan(x[1:4]).all() and torch.isfinite(x[[0, 4]]).all()
    lf, inf_ = tr.factor(a, shift, method=method, block=32)
    assert torch.equal(inf_, info) and torch.equal(lf[[0, 4]], lower[[0, 4]])
    for i in (0, 4):
        xi, li, _ = tr.ridge(a[i : i + 1], b[i : i + 1], shift[i : i + 1], method=method)
        assert torch.equal(lower[i : i + 1], li)
        if n <= tr.SMALL_MAX_N:  # Triton's solve; torch's trsm may round a batch differently
            assert torch.equal(x[i : i + 1], xi)
        torch.testing.assert_close(x[i : i + 1], xi, rtol=1e-12, atol=1e-12)
    # a small shift rescues the rank-deficient member
    small = torch.full((1,), 1e-3, dtype=torch.float64, device=DEVICE)
    x2, l2, i2 = tr.ridge(a[2:3], b[2:3], small, method=method)
    _check_factor(l2, i2, a[2:3].cpu(), small, dtype, n)
    residual = _shifted(a[2:3], small) @ x2.cpu() - b[2:3].cpu()
    assert float(residual.abs().max()) < 1e-9


def test_non_contiguous_inputs() -> None:
    """Strided views (a transposed symmetric matrix, a column slice of b) give the results of
    their contiguous copies."""
    dtype, n = torch.float64, 7
    a = _dev(_spd(2, n, seed=11), dtype).mT  # same values, swapped strides
    b = _dev(_randn(2, n, 6, seed=12), dtype)[:, :, ::2]
    shift = torch.tensor([0.1, 0.2], dtype=torch.float64, device=DEVICE)
    assert not a.is_contiguous() and not b.is_contiguous()
    for method in ("small", "blocked"):
        got = tr.ridge(a, b, shift, method=method, block=16)
        want = tr.ridge(a.contiguous(), b.contiguous(), shift, method=method, block=16)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    lower = got[1]
    assert torch.equal(tr.solve(lower.mT.contiguous().mT, b), tr.solve(lower, b.contiguous()))


def test_empty_shapes() -> None:
    shift = torch.zeros(2, dtype=torch.float64, device=DEVICE)
    lower, info = tr.factor(torch.zeros(2, 0, 0, device=DEVICE), shift)
    assert lower.shape == (2, 0, 0) and info.tolist() == [0, 0]
    k, b = _dev(_spd(2, 3, seed=1), torch.float32), torch.zeros(2, 3, 0, device=DEVICE)
    x, _, info = tr.ridge(k, b, shift)
    assert x.shape == (2, 3, 0) and info.tolist() == [0, 0]


# --------------------------------------------------------------------------------------------
# kernel_ridge_batched
# --------------------------------------------------------------------------------------------


def _ref_gram(a: torch.Tensor, c: torch.Tensor, kernel: str, ell: float) -> torch.Tensor:
    """float64 K(a, c) by direct differences (no GEMM trick)."""
    diff = a.double().cpu()[:, :, None] - c.double().cpu()[:, None]
    s = diff.abs().sum(-1) / ell if kernel == "laplacian" else diff.pow(2).sum(-1) / ell**2
    return kernel_from_s(s, kernel)


def _krr_case(kernel, dtype, batch, n, m, d, p, with_new, method="auto", seed=0):
    g = _gen(seed)
    x = torch.rand(batch, n, d, generator=g, dtype=torch.float64) * 3
    y = torch.randn(batch, n, p, generator=g, dtype=torch.float64)
    xn = torch.rand(batch, m, d, generator=g, dtype=torch.float64) * 3
    shift = torch.linspace(0.05, 1.0, batch, dtype=torch.float64)
    ell = 0.9
    alpha, pred, info = tr.kernel_ridge_batched(
        _dev(x, dtype),
        _dev(y, dtype),
        shift.to(DEVICE),
        KERNEL_IDS[kernel],
        torch.tensor(ell, dtype=dtype, device=DEVICE),
        _dev(xn, dtype) if with_new else None,
        method=method,
    )
    assert info.tolist() == [0] * batch and alpha.dtype == dtype and alpha.shape == (batch, n, p)
    alpha_ref = torch.linalg.solve(_shifted(_ref_gram(x, x, kernel, ell), shift), y)
    tol = 100 * RTOL[dtype]
    assert _rel_err(alpha, alpha_ref) <= tol, (kernel, n, dtype)
    if not with_new:
        assert pred is None
        return
    assert pred.dtype == dtype and pred.shape == (batch, m, p)
    assert _rel_err(pred, _ref_gram(xn, x, kernel, ell) @ alpha_ref) <= tol, (kernel, n, dtype)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernel_ridge_batched_fused(kernel) -> None:
    """All kernels, n in {1, 8, 20}, with and without x_new (float64), one float32 case."""
    for n in (1, 8, 20):
        for with_new in (True, False):
            _krr_case(kernel, torch.float64, 3, n, 5, 3, 2, with_new, seed=n)
    _krr_case(kernel, torch.float32, 2, 20, 17, 3, 1, True, seed=21)


def test_kernel_ridge_batched_fallback_and_failure() -> None:
    """n > FUSED_MAX_N runs gram → ridge → gram_matmul; an indefinite shift flags info."""
    n = tr.FUSED_MAX_N + 5
    _krr_case("matern32", torch.float64, 2, n, 4, 2, 2, True, seed=5)
    x = _dev(torch.rand(2, 6, 2, generator=_gen(6), dtype=torch.float64), torch.float64)
    y = torch.ones(2, 6, 1, dtype=torch.float64, device=DEVICE)
    shift = torch.tensor([0.1, -100.0], dtype=torch.float64, device=DEVICE)
    ell = torch.tensor(1.0, dtype=torch.float64, device=DEVICE)
    for method in ("fused", "composed"):
        alpha, pred, info = tr.kernel_ridge_batched(x, y, shift, 0, ell, x, method=method)
        assert info[0] == 0 and info[1] > 0
        assert torch.isfinite(alpha[0]).all() and torch.isnan(alpha[1]).all()
        assert torch.isfinite(pred[0]).all() and torch.isnan(pred[1]).all()


@pytest.mark.skipif(not _INTERPRET, reason="replays the GPU autotuner's sequence on the CPU")
def test_gpu_autotuning_replay(monkeypatch) -> None:
    """On a GPU the autotuner runs each config on the launch's own buffers before the chosen
    one: the autotuned kernels must not read what they write (the blocked updates, which do,
    are not autotuned). Two warps configs per kernel give the single-config results exactly."""
    n, p = 13, 3
    a = _dev(_spd(2, n, seed=51), torch.float64)
    b = _dev(_randn(2, n, p, seed=52), torch.float64)
    shift = torch.tensor([0.0, 0.3], dtype=torch.float64, device=DEVICE)
    x = _dev(_randn(2, n, 2, seed=53), torch.float64)
    ell = torch.tensor(1.3, dtype=torch.float64, device=DEVICE)

    def run_all():
        lower, info = tr.factor(a, shift, method="small")
        return (
            lower,
            info,
            tr.solve(lower, b),
            *tr.ridge(a, b, shift, method="small"),
            *tr.kernel_ridge_batched(x, b, shift, 0, ell, x[:, :5], method="fused"),
        )

    expected = run_all()
    configs = tr._warps_configs(1, 4, interpreter=False)
    tuners = (tr._factor_small, tr._solve_small, tr._ridge_small, tr._krr_fused)
    for tuner in tuners:
        replay_gpu_autotuning(monkeypatch, tuner, configs)
    for got, want in zip(run_all(), expected, strict=True):
        assert torch.equal(got, want)
    assert all(t.best_config is configs[1] for t in tuners)
