"""cholesky: invariants, agreement with torch, jitter policy, errors, autograd, dispatch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import BACKEND_PARAMS, gradcheck_on

from fastamort import NotPSDError, NumericalWarning, cholesky, record_backends, ridge_solve
from fastamort.ops.cholesky import JITTER_RETRIES, JITTER_START

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-4, torch.float64: 1e-11}
# 1, 2, primes, both sides of the C++ small-kernel/LAPACK split and of Triton's tiles, 2000
SIZES = [1, 2, 7, 31, 33, 64, 65, 67, 257, 2000]
TRITON_SIZES = [1, 2, 7, 16, 17, 33, 67]


def spd(batch, n, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    a = a @ a.mT / n + torch.eye(n, dtype=torch.float64)
    return a.to(dtype).to(device)


def rel_residual(lower, a):
    return float((lower @ lower.mT - a).abs().max() / a.abs().max())


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_invariant_and_agreement(device, backend, dtype):
    for n in TRITON_SIZES if backend == "triton" else SIZES:
        a = spd((), n, dtype, device, seed=n)
        with record_backends() as ran:
            lower = cholesky(a, backend=backend)
        assert ran == [("cholesky", backend)]
        assert torch.equal(lower, lower.tril()), "strict upper triangle must be zero"
        assert rel_residual(lower, a) <= TOL[dtype] * max(1, n / 100), n
        if dtype == torch.float64:
            torch.testing.assert_close(lower, torch.linalg.cholesky(a), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_equals_looped(device, backend, dtype):
    for batch, n in [((40,), 5), ((2, 3), 20), ((3,), 70)]:
        a = spd(batch, n, dtype, device, seed=1)
        lower = cholesky(a, backend=backend)
        flat = a.reshape(-1, n, n)
        looped = torch.stack([cholesky(m, backend=backend) for m in flat]).reshape(lower.shape)
        torch.testing.assert_close(lower, looped, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_only_lower_triangle_is_read(device, backend):
    a = spd((), 9, torch.float64, device)
    garbage = a.tril() + torch.triu(torch.full_like(a, 1e3), diagonal=1)
    torch.testing.assert_close(cholesky(garbage, backend=backend), torch.linalg.cholesky(a))


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient_rescued_by_jitter_on_failing_members_only(device, backend, dtype):
    torch.manual_seed(0)  # independent of test order (a float32 draw may factorise unjittered)
    good = spd((), 6, dtype, device)
    v = torch.randn(6, 2, dtype=torch.float64).to(dtype).to(device)
    deficient = v @ v.mT  # rank 2: positive semi-definite, not definite
    a = torch.stack([good, deficient, good])
    with pytest.warns(NumericalWarning, match=r"1 of 3 matrices.*batch indices 1"):
        lower = cholesky(a, backend=backend)
    # members that factorised are untouched: exactly the un-jittered factor
    torch.testing.assert_close(lower[0], cholesky(good, backend=backend), rtol=0, atol=0)
    assert rel_residual(lower[1], deficient) < 1e-3
    assert torch.isfinite(lower).all()


# diag(1, -t): mean |diagonal| (1 + t) / 2, so the cap 1e5 × start × (1 + t) / 2 rescues the
# first t and not the second (0.052 / 0.053 in float32, 5.00002e-6 / 5.00003e-6 in float64).
JITTER_CAP_CASES = {torch.float32: (0.04, 0.06), torch.float64: (4e-6, 6e-6)}


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_jitter_grows_tenfold_up_to_the_documented_cap(device, backend, dtype):
    rescued, beyond = JITTER_CAP_CASES[dtype]
    a = torch.diag(torch.tensor([1.0, -rescued], dtype=dtype, device=device))
    with pytest.warns(NumericalWarning) as record:
        lower = cholesky(a, backend=backend)
    jitters = [float(str(w.message).split("jitter ")[1].split()[0]) for w in record]
    assert len(jitters) == JITTER_RETRIES + 1  # the last try, at the cap, succeeds
    start = JITTER_START[dtype] * (1 + rescued) / 2
    torch.testing.assert_close(
        torch.tensor(jitters), start * 10.0 ** torch.arange(JITTER_RETRIES + 1.0), rtol=2e-3, atol=0
    )
    assert float(lower[1, 1]) ** 2 == pytest.approx(jitters[-1] - rescued, rel=1e-3)
    a[1, 1] = -beyond
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        with pytest.raises(NotPSDError, match="jitter up to") as err:
            cholesky(a, backend=backend)
    tried = float(str(err.value).split("jitter up to ")[1].split()[0])
    cap = JITTER_START[dtype] * (1 + beyond) / 2 * 10.0**JITTER_RETRIES
    assert tried == pytest.approx(cap, rel=2e-3) and cap < beyond


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_indefinite_raises_not_psd_naming_size_dtype_index(device, backend):
    a = spd((3,), 4, torch.float64, device)
    a[2] = -a[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        with pytest.raises(NotPSDError, match=r"4×4 \(torch.float64\) at batch index 2.*jitter up"):
            cholesky(a, backend=backend)
    with pytest.raises(NotPSDError, match="no jitter"):
        cholesky(a, jitter=0, backend=backend)
    assert issubclass(NotPSDError, ValueError)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_non_finite_is_not_reported_as_not_psd(device, backend):
    a = spd((), 3, torch.float64, device)
    a[1, 0] = float("nan")
    with pytest.raises(ValueError, match="a: contains NaN") as err:
        cholesky(a, backend=backend)
    assert not isinstance(err.value, NotPSDError)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_gradcheck_float64(device, backend):
    a = spd((2,), 5, torch.float64, device).requires_grad_()
    with record_backends() as ran:
        assert gradcheck_on(backend, lambda a: cholesky((a + a.mT) / 2, backend=backend), (a,))
    assert ("cholesky", backend) in ran


def test_bad_input():
    with pytest.raises(ValueError, match="a: expected square"):
        cholesky(torch.randn(3, 4))
    with pytest.raises(TypeError, match="a: expected dtype"):
        cholesky(torch.eye(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="jitter: expected"):
        cholesky(-torch.eye(2), jitter="lots")
    # checked up front, even when the matrix needs no jitter
    for jitter in ("Auto", float("inf"), float("nan"), -1.0, torch.tensor(1e-3)):
        with pytest.raises(ValueError, match="jitter: expected"):
            cholesky(torch.eye(2), jitter=jitter)
    # NumPy scalars are numbers too
    with pytest.warns(NumericalWarning):
        assert torch.isfinite(cholesky(-torch.eye(2), jitter=np.float32(0.1))).all()
    assert cholesky(torch.zeros(0, 0)).shape == (0, 0)
    assert cholesky(torch.zeros(4, 0, 0)).shape == (4, 0, 0)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
def test_zero_matrix_raises_not_psd_at_once(device, backend, dtype):
    """A numerically zero matrix has no scale for a jitter: NotPSDError at once. It used to
    "factor" with a subnormal jitter and ridge_solve(zeros(3, 3), ones(3), 0.0) gave
    [nan, nan, inf] with a warning."""
    zero = torch.zeros(3, 3, dtype=dtype, device=device)
    rhs = torch.ones(3, dtype=dtype, device=device)
    subnormal = torch.finfo(dtype).tiny / 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)  # no jitter is tried
        for lam in (0.0, subnormal):
            with pytest.raises(NotPSDError, match=r"3×3 .* index 0 .* ridge is (zero|only)"):
                ridge_solve(zero, rhs, lam, backend=backend)
        with pytest.raises(NotPSDError, match="diagonal plus the ridge is zero"):
            cholesky(zero, backend=backend)
        good = spd((), 3, dtype, device)
        with pytest.raises(NotPSDError, match=r"at batch index 1 is not positive definite, and"):
            cholesky(torch.stack([good, zero, good]), backend=backend)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("n", [2, 130])
def test_subnormal_pivot_is_a_failed_factorisation(device, backend, n):
    """A pivot below the smallest normal number fails the factorisation on every backend (the
    C++ own kernels for small n, LAPACK's potrf beyond): its solve would overflow."""
    for dtype in DTYPES:
        diag = torch.ones(n, dtype=dtype)
        diag[-1] = torch.finfo(dtype).tiny / 4
        a = torch.diag(diag).to(device)
        with pytest.raises(NotPSDError, match=f"{n}×{n} .*no jitter"):
            cholesky(a, jitter=0, backend=backend)
        diag[-1] = torch.finfo(dtype).tiny * 4  # a normal pivot still factors
        lower = cholesky(torch.diag(diag).to(device), jitter=0, backend=backend)
        assert float(lower[-1, -1]) ** 2 == pytest.approx(float(diag[-1]), rel=1e-5)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_but_normal_matrices_still_solve(device, backend, dtype):
    a = 1e-30 * torch.eye(3, dtype=dtype, device=device)
    x = ridge_solve(a, torch.full((3,), 1e-30, dtype=dtype, device=device), 0.0, backend=backend)
    torch.testing.assert_close(x, torch.ones(3, dtype=dtype, device=device))


def test_lam_beyond_the_dtype_range_is_named():
    """λ above float32's range became ∞ and was reported as "jitter up to inf"."""
    k, b = torch.eye(3), torch.ones(3)
    for lam in (1e39, torch.tensor(1e39, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"lam: 1e\+39 is beyond the range of torch.float32"):
            ridge_solve(k, b, lam)
    x = ridge_solve(k.double(), b.double(), 1e39)
    torch.testing.assert_close(x, torch.full((3,), 1 / (1 + 1e39), dtype=torch.float64))


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_negative_bit_views_are_read_as_values(device, backend):
    """Views with the negative bit set (x.conj().imag of a complex x) failed in the C++
    backend with "Can't call numpy()"."""
    a = spd((), 5, torch.float64, device)
    neg = torch._neg_view(-a)
    assert neg.is_neg()
    torch.testing.assert_close(cholesky(neg, backend=backend), cholesky(a, backend=backend))
    b = torch.arange(5.0, dtype=torch.float64, device=device)
    b_neg = torch._neg_view(-b)
    torch.testing.assert_close(
        ridge_solve(neg, b_neg, 0.5, backend=backend), ridge_solve(a, b, 0.5, backend=backend)
    )


def test_meta_tensors_give_shapes():
    """Meta tensors (shapes only) failed in Tensor.item(); the value checks now skip them."""
    a = torch.empty(2, 4, 4, device="meta")
    assert cholesky(a).shape == (2, 4, 4)
    out = ridge_solve(a, torch.empty(2, 4, 3, device="meta"), 0.1)
    assert out.shape == (2, 4, 3) and out.device.type == "meta"
