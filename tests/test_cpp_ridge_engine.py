"""fastamort._C ridge engine called directly: cholesky_forward, cholesky_solve,
ridge_solve_forward and kernel_ridge_batched against numpy/scipy float64 references.

Sizes cover both routes of the engine: the own lane-interleaved kernels (n <= 128 and at most
64 right-hand sides, groups of 8 problems; a group of fewer than 4 problems takes LAPACK) and
LAPACK (n > 128). kernel_ridge_batched on the own route builds K in the lanes straight from the
points (the "fused" route, also taken by groups of fewer than 4 when n <= 16). On the LAPACK
route a problem that a call runs alone (a batch of one, or fewer problems than threads) with
n >= 192 is factored by the tiled Cholesky on OpenMP threads
(tiles of about n/5, 64..256) and solved by the blocked substitution; the private hook
``_tiled_ridge_solve`` forces that path with any tile order, so that small sizes can probe the
tile boundaries.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

C = pytest.importorskip("fastamort._C")

DTYPES = [np.float32, np.float64]
# Relative tolerances (to the largest entry involved) per dtype.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
OWN_MAX_N = C.ROUTE_THRESHOLDS["own_max_n"]  # the own/LAPACK split
TILED_MIN_N = C.ROUTE_THRESHOLDS["tiled_min_n"]  # one problem from this order up: tiles
KERNELS = {kid: name for name, kid in C.KERNEL_IDS.items()}


def test_the_extension_and_python_agree_on_kernel_ids():
    from fastamort.ops.kernel_math import KERNEL_IDS

    assert C.KERNEL_IDS == KERNEL_IDS


def test_the_docstring_states_the_exported_route_thresholds():
    t = C.ROUTE_THRESHOLDS
    doc = " ".join(__doc__.split())
    assert f"(n <= {t['own_max_n']} and at most {t['own_max_p']} right-hand sides" in doc
    assert f"groups of {t['lanes']} problems" in doc
    assert f"n >= {t['tiled_min_n']} is factored by the tiled Cholesky" in doc


def _spd(rng, batch, n, dtype):
    """Well-conditioned SPD matrices G·Gᵀ/n + I."""
    g = rng.standard_normal((batch, n, n))
    return (g @ g.transpose(0, 2, 1) / max(n, 1) + np.eye(n)).astype(dtype)


def _rhs(rng, batch, n, p, dtype):
    return rng.standard_normal((batch, n, p)).astype(dtype)


def _tol(dtype, *arrays):
    scale = max([1.0] + [float(np.abs(a).max()) for a in arrays if a.size])
    return RTOL[dtype] * scale


def _check_factor(a, shift, l, info, dtype):
    n = a.shape[-1]
    assert l.dtype == dtype and info.dtype == np.int32
    assert np.all(info == 0)
    assert np.all(np.triu(l, 1) == 0), "L must have exact zeros above the diagonal"
    target = np.tril(a).astype(np.float64)
    target = target + np.tril(target, -1).transpose(0, 2, 1) + shift[:, None, None] * np.eye(n)
    l64 = l.astype(np.float64)
    err = np.abs(l64 @ l64.transpose(0, 2, 1) - target).max(initial=0.0)
    assert err <= _tol(dtype, target) * n


def _check_solve(a, shift, x, b, dtype):
    n = a.shape[-1]
    if n == 0:
        return
    a64 = a.astype(np.float64) + shift[:, None, None] * np.eye(n)
    resid = a64 @ x.astype(np.float64) - b
    xmax = float(np.abs(x).max(initial=1.0))
    assert np.abs(resid).max(initial=0.0) <= _tol(dtype, a64) * n * xmax
    ref = np.linalg.solve(a64, b.astype(np.float64))
    assert np.abs(x - ref).max(initial=0.0) <= 50 * _tol(dtype, ref) * n


# (batch, n, p): n = 0, 1, 2, primes, the split point and just past it, one large problem;
# batches of 1-3 (LAPACK route), 5, 8 and 13 (own groups, one partial), 11 (8 own + 3 LAPACK).
CASES = [
    (3, 0, 2),
    (1, 1, 1),
    (13, 1, 3),
    (5, 2, 1),
    (11, 7, 2),
    (13, 31, 1),
    (8, 67, 5),
    (8, 5, 70),
    (2, 67, 3),
    (9, OWN_MAX_N, 2),
    (9, OWN_MAX_N + 1, 2),
    (3, 300, 4),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n", "p"), CASES)
def test_factor_and_solve_invariants(dtype, batch, n, p):
    rng = np.random.default_rng(n * 100 + batch)
    a = _spd(rng, batch, n, dtype)
    b = _rhs(rng, batch, n, p, dtype)
    shift = rng.uniform(0.0, 2.0, batch)  # per batch member
    l, info = C.cholesky_forward(a, shift)
    assert l.shape == (batch, n, n) and info.shape == (batch,)
    _check_factor(a, shift, l, info, dtype)
    x, l2, info2 = C.ridge_solve_forward(a, b, shift)
    assert x.shape == (batch, n, p) and x.dtype == dtype
    assert np.all(info2 == 0)
    assert np.abs(l2 - l).max(initial=0.0) <= _tol(dtype, l)
    _check_solve(a, shift, x, b, dtype)
    x2 = C.cholesky_solve(l, b)
    assert x2.shape == x.shape and x2.dtype == dtype
    assert np.abs(x2 - x).max(initial=0.0) <= 50 * _tol(dtype, x) * max(n, 1)


def test_large_float64_against_scipy():
    rng = np.random.default_rng(7)
    n = 2000
    r = rng.uniform(-1.0, 1.0, (n, n))
    a = ((r + r.T) / 2 + 100.0 * np.eye(n))[None]  # eigenvalues within 100 ± 40: SPD, O(n²)
    b = _rhs(rng, 1, n, 2, np.float64)
    shift = np.array([0.1])
    x, l, info = C.ridge_solve_forward(a, b, shift)
    assert info[0] == 0
    ref_l = scipy.linalg.cholesky(a[0] + 0.1 * np.eye(n), lower=True)
    assert np.abs(l[0] - ref_l).max() <= 1e-11
    assert np.all(np.triu(l[0], 1) == 0)
    ref_x = scipy.linalg.cho_solve((ref_l, True), b[0])
    assert np.abs(x[0] - ref_x).max() <= 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy_float64(dtype):
    rng = np.random.default_rng(3)
    for batch, n in [(16, 5), (2, 31), (8, 100), (2, 200)]:
        a = _spd(rng, batch, n, dtype)
        b = _rhs(rng, batch, n, 3, dtype)
        shift = np.full(batch, 0.25)
        x, l, _ = C.ridge_solve_forward(a, b, shift)
        a64 = a.astype(np.float64) + 0.25 * np.eye(n)
        ref_l = np.linalg.cholesky(a64)
        ref_x = np.linalg.solve(a64, b.astype(np.float64))
        assert np.abs(l - ref_l).max() <= 20 * _tol(dtype, ref_l)
        assert np.abs(x - ref_x).max() <= 50 * _tol(dtype, ref_x) * n


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, 31, 130])
def test_batched_equals_looped(dtype, n):
    rng = np.random.default_rng(n)
    batch = 11
    a = _spd(rng, batch, n, dtype)
    b = _rhs(rng, batch, n, 2, dtype)
    shift = rng.uniform(0.0, 1.0, batch)
    x, l, info = C.ridge_solve_forward(a, b, shift)
    lc, _ = C.cholesky_forward(a, shift)
    xs = C.cholesky_solve(l, b)
    for i in range(batch):
        xi, li, infoi = C.ridge_solve_forward(a[i : i + 1], b[i : i + 1], shift[i : i + 1])
        assert infoi[0] == info[i] == 0
        assert np.abs(li[0] - l[i]).max() <= _tol(dtype, li)
        assert np.abs(lc[i] - l[i]).max() <= _tol(dtype, li)
        assert np.abs(xi[0] - x[i]).max() <= 50 * _tol(dtype, xi) * n
        assert np.abs(C.cholesky_solve(l[i : i + 1], b[i : i + 1])[0] - xs[i]).max() <= (
            50 * _tol(dtype, xi) * n
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_reads_only_the_lower_triangle(dtype):
    rng = np.random.default_rng(5)
    for batch, n in [(8, 9), (1, 9), (2, 150), (1, 400)]:
        a = _spd(rng, batch, n, dtype)
        b = _rhs(rng, batch, n, 1, dtype)
        shift = np.zeros(batch)
        junk = a.copy()
        junk[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = np.nan
        x, l, _ = C.ridge_solve_forward(a, b, shift)
        xj, lj, infoj = C.ridge_solve_forward(junk, b, shift)
        assert np.all(infoj == 0)
        np.testing.assert_array_equal(lj, l)
        np.testing.assert_array_equal(xj, x)
        l_only, _ = C.cholesky_forward(junk, shift)
        np.testing.assert_array_equal(l_only, l)
        lj_upper = l.copy()
        lj_upper[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = 7.0
        np.testing.assert_array_equal(C.cholesky_solve(lj_upper, b), C.cholesky_solve(l, b))


def _rank_deficient(n, k, dtype):
    """PSD of rank k whose pivot k + 1 is exactly zero: [[S, 0], [0, 0]] or all ones (k=1)."""
    if k == 1:
        return np.ones((n, n), dtype)
    rng = np.random.default_rng(n)
    out = np.zeros((n, n))
    out[:k, :k] = _spd(rng, 1, k, np.float64)[0]
    return out.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "k", "batch"), [(5, 1, 1), (5, 1, 8), (12, 4, 8), (150, 1, 2), (150, 60, 1)]
)
def test_rank_deficient_psd(dtype, n, k, batch):
    a = np.broadcast_to(_rank_deficient(n, k, dtype), (batch, n, n)).copy()
    b = np.ones((batch, n, 1), dtype)
    _, info = C.cholesky_forward(a, np.zeros(batch))
    np.testing.assert_array_equal(info, k + 1)
    x, _, info = C.ridge_solve_forward(a, b, np.zeros(batch))
    np.testing.assert_array_equal(info, k + 1)
    assert np.all(np.isnan(x))
    shift = np.full(batch, 1e-2)
    x, l, info = C.ridge_solve_forward(a, b, shift)
    assert np.all(info == 0)
    _check_factor(a, shift, l, info, dtype)
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [6, 140])
def test_indefinite_gives_info_and_nan(dtype, n):
    rng = np.random.default_rng(11)
    batch = 9
    a = _spd(rng, batch, n, dtype)
    b = _rhs(rng, batch, n, 2, dtype)
    bad = [1, 4, 8]
    for i in bad:
        a[i, 3, 3] = -50.0  # the leading minor of order 4 is indefinite
    shift = np.zeros(batch)
    x, _, info = C.ridge_solve_forward(a, b, shift)
    good = [i for i in range(batch) if i not in bad]
    np.testing.assert_array_equal(info[bad], 4)
    np.testing.assert_array_equal(info[good], 0)
    assert np.all(np.isnan(x[bad]))
    _check_solve(a[good], shift[good], x[good], b[good], dtype)
    _, info_c = C.cholesky_forward(a, shift)
    np.testing.assert_array_equal(info_c, info)
    # a shift can make it definite again, or break a definite matrix (per batch member)
    shift = np.where(np.isin(np.arange(batch), bad), 100.0, -1e3)
    _, _, info = C.ridge_solve_forward(a, b, shift)
    assert np.all(info[bad] == 0) and np.all(info[good] == 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 70, 160])
def test_non_finite_input_reports_failure(dtype, n):
    rng = np.random.default_rng(13)
    batch = 8
    a = _spd(rng, batch, n, dtype)
    b = _rhs(rng, batch, n, 1, dtype)
    a[0, 3, 1] = np.nan  # lower triangle: row 4 fails
    a[1, 2, 2] = np.nan  # a NaN pivot
    a[2, n - 1, n - 1] = np.inf  # an infinite last pivot (LAPACK would accept it)
    a[3, 4, 0] = np.inf
    a[4] = np.nan
    shift = np.zeros(batch)
    shift[5] = np.nan
    x, _, info = C.ridge_solve_forward(a, b, shift)
    assert np.all(info[:6] > 0) and np.all(info[6:] == 0)
    assert info[0] == 4 and info[1] == 3 and info[2] == n and info[4] == 1 and info[5] == 1
    assert np.all(np.isnan(x[:6])) and np.all(np.isfinite(x[6:]))
    _, info_c = C.cholesky_forward(a, shift)
    np.testing.assert_array_equal(info_c, info)


# ---- the tiled factorisation and the blocked solve (one large problem) ----------------------


def _ref_factor_solve(a, shift, b):
    """float64 references: scipy's L of a + shift·I (lower triangle read) and the solution."""
    n = a.shape[-1]
    a64 = np.tril(a.astype(np.float64))
    a64 = a64 + np.tril(a64, -1).T + shift * np.eye(n)
    ref_l = scipy.linalg.cholesky(a64, lower=True)
    return ref_l, scipy.linalg.cho_solve((ref_l, True), b.astype(np.float64))


def _check_against_scipy(a, shift, b, x, l, dtype):
    ref_l, ref_x = _ref_factor_solve(a, shift, b)
    n = a.shape[-1]
    assert l.dtype == dtype and x.dtype == dtype
    assert np.all(np.triu(l, 1) == 0)
    assert np.abs(l - ref_l).max(initial=0.0) <= 20 * _tol(dtype, ref_l) * max(1, n // 64)
    assert np.abs(x - ref_x).max(initial=0.0) <= 50 * _tol(dtype, ref_x) * n


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", ["N", "T"])
@pytest.mark.parametrize(("m", "n"), [(1, 1), (5, 7), (33, 16), (3, 130)])
def test_trsm_right_lower(dtype, trans, m, n):
    """X·op(L) = alpha·B, row-major, reading only the lower triangle of L."""
    rng = np.random.default_rng(m * 31 + n)
    lower = (np.tril(rng.standard_normal((n, n))) / np.sqrt(n) + 2 * np.eye(n)).astype(dtype)
    b = rng.standard_normal((m, n)).astype(dtype)
    junk = lower + np.triu(np.full((n, n), np.nan), 1).astype(dtype)
    x = C._trsm_right_lower(trans, junk, b, 0.5)
    assert x.shape == (m, n) and x.dtype == dtype
    op = lower.astype(np.float64)
    op = op if trans == "N" else op.T
    ref = np.linalg.solve(op.T, 0.5 * b.astype(np.float64).T).T
    assert np.abs(x - ref).max() <= 50 * _tol(dtype, ref) * n


# (n, tile): one tile, a tile ± 1, 2·tile + 3, ragged last tiles, and tiles of the real sizes.
TILED_CASES = [
    (1, 16),
    (15, 16),
    (16, 16),
    (17, 16),
    (35, 16),
    (64, 7),
    (127, 128),
    (128, 128),
    (129, 128),
    (259, 128),
    (300, 256),
    (513, 256),
    (800, 384),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "tile"), TILED_CASES)
def test_tiled_against_scipy(dtype, n, tile):
    rng = np.random.default_rng(n + tile)
    a = _spd(rng, 1, n, dtype)[0]
    a[np.triu_indices(n, 1)] = np.nan  # only the lower triangle is read
    b = _rhs(rng, 1, n, 3, dtype)[0]
    x, l, info = C._tiled_ridge_solve(a, b, 0.3, tile)
    assert info == 0 and x.shape == (n, 3) and l.shape == (n, n)
    _check_against_scipy(a, 0.3, b, x, l, dtype)
    x0, _, info = C._tiled_ridge_solve(a, b[:, :0].copy(), 0.3, tile)
    assert info == 0 and x0.shape == (n, 0)


# Through the public entry points with a batch of one: 191 takes one potrf call, from 192 on
# the tiled path (tiles of 64, 64, 224 and 256 at 192, 300, 1000 and 1500, ragged but 192).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "p"), [(TILED_MIN_N - 1, 2), (TILED_MIN_N, 1), (300, 17), (1000, 1), (1500, 70)]
)
def test_single_large_problem(dtype, n, p):
    rng = np.random.default_rng(n)
    a = _spd(rng, 1, n, dtype)
    b = _rhs(rng, 1, n, p, dtype)
    shift = np.array([0.2])
    x, l, info = C.ridge_solve_forward(a, b, shift)
    assert info[0] == 0
    _check_against_scipy(a[0], 0.2, b[0], x[0], l[0], dtype)
    l2, info2 = C.cholesky_forward(a, shift)
    assert info2[0] == 0
    np.testing.assert_array_equal(l2, l)  # the same tiles and the same order of operations
    x2 = C.cholesky_solve(l, b)
    np.testing.assert_array_equal(x2, x)


def _lapack_info(a):
    """LAPACK's info for the lower Cholesky of a (float64, reference potrf)."""
    return scipy.linalg.lapack.dpotrf(a.astype(np.float64), lower=1, clean=0)[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "tile", "bad"),
    [
        (40, 16, [0, 15, 16, 17, 32, 39]),
        (259, 128, [127, 128, 258]),
        (1000, None, [0, 223, 224, 500, 999]),
    ],
)
def test_tiled_indefinite_info_matches_lapack(dtype, n, tile, bad):
    """A negative pivot at j: info = j + 1 (1-based), as LAPACK's, in any tile."""
    rng = np.random.default_rng(n)
    base = _spd(rng, 1, n, dtype)[0]
    b = _rhs(rng, 1, n, 2, dtype)[0]
    for j in bad:
        a = base.copy()
        a[j, j] = -50.0
        assert _lapack_info(a) == j + 1
        if tile is None:  # the public route (tiles of 224)
            x, _, info = C.ridge_solve_forward(a[None], b[None], np.zeros(1))
            _, info_c = C.cholesky_forward(a[None], np.zeros(1))
            assert info[0] == info_c[0] == j + 1
            x = x[0]
        else:
            x, _, info = C._tiled_ridge_solve(a, b, 0.0, tile)
            assert info == j + 1
        assert np.all(np.isnan(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "tile"), [(40, 16), (259, 128), (400, None)])
def test_tiled_non_finite_pivots(dtype, n, tile):
    """OpenBLAS's potrf passes NaN pivots with info = 0; the tiled path scans each diagonal tile."""
    rng = np.random.default_rng(n)
    base = _spd(rng, 1, n, dtype)[0]
    b = _rhs(rng, 1, n, 1, dtype)[0]
    cases = [
        ((n // 2, n // 2), np.nan, n // 2 + 1),  # a NaN pivot
        ((n - 1, n - 1), np.inf, n),  # an infinite last pivot (LAPACK accepts it)
        ((n - 1, 3), np.nan, n),  # NaN in the lower triangle: the pivot of its row fails
        ((17, 17), -np.inf, 18),
    ]
    for (i, j), value, expected in cases:
        a = base.copy()
        a[i, j] = value
        if tile is None:
            x, _, info = C.ridge_solve_forward(a[None], b[None], np.zeros(1))
            x, info = x[0], info[0]
        else:
            x, _, info = C._tiled_ridge_solve(a, b, 0.0, tile)
        assert info == expected, (i, j, value)
        assert np.all(np.isnan(x))


_THREADS_SCRIPT = """
import sys
import numpy as np, scipy.linalg, torch
import fastamort._C as C
# torch caps OMP_NUM_THREADS at the core count on import; C shares torch's OpenMP runtime
torch.set_num_threads(int(sys.argv[1]))
if C.num_threads() != int(sys.argv[1]):
    print("skip", C.num_threads())
    sys.exit(0)
rng = np.random.default_rng(0)
for dtype, tol in ((np.float32, 2e-3), (np.float64, 1e-9)):
    for batch, n, p in ((3, 600, 2), (1, 700, 1)):
        g = rng.standard_normal((batch, n, n))
        a = (g @ g.transpose(0, 2, 1) / n + np.eye(n)).astype(dtype)
        b = rng.standard_normal((batch, n, p)).astype(dtype)
        shift = np.array([0.0, 0.5, 3.0])[:batch]  # per batch member
        a[-1, 5, 5] = -100.0  # the last member: indefinite at order 6
        x, l, info = C.ridge_solve_forward(a, b, shift)
        assert info[-1] == 6 and np.all(np.isnan(x[-1])), info
        assert np.all(info[:-1] == 0), info
        _, info_c = C.cholesky_forward(a, shift)
        assert np.array_equal(info_c, info)
        for i in range(batch - 1):
            a64 = a[i].astype(np.float64) + shift[i] * np.eye(n)
            ref = np.linalg.solve(a64, b[i].astype(np.float64))
            assert np.abs(x[i] - ref).max() <= tol * np.abs(ref).max()
            ref_l = scipy.linalg.cholesky(a64, lower=True)
            assert np.abs(l[i] - ref_l).max() <= tol * np.abs(ref_l).max()
            xs = C.cholesky_solve(l[i : i + 1], b[i : i + 1])[0]
            assert np.abs(xs - ref).max() <= tol * np.abs(ref).max()
print(C.num_threads())
"""


@pytest.mark.parametrize("threads", [1, 4])
def test_thread_counts(threads):
    """One thread: one potrf call per problem. Four threads and a batch of three 600×600
    problems: fewer problems than threads run one after another, each factored in tiles on
    the threads, with per-member shifts and one member failing."""
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, str(threads)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("skip"):
        pytest.skip(f"the extension's OpenMP runtime is not torch's ({out.stdout.strip()})")
    assert out.stdout.strip() == str(threads)


def _gram_ref(x, y, kernel, ell):
    diff = x[:, :, None, :].astype(np.float64) - y[:, None, :, :].astype(np.float64)
    if kernel == 4:
        return np.exp(-np.abs(diff).sum(-1) / ell)
    r = np.sqrt((diff**2).sum(-1)) / ell
    if kernel == 0:
        return np.exp(-0.5 * r**2)
    if kernel == 1:
        return np.exp(-r)
    if kernel == 2:
        a = np.sqrt(3.0) * r
        return (1.0 + a) * np.exp(-a)
    a = np.sqrt(5.0) * r
    return (1.0 + a + a**2 / 3.0) * np.exp(-a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(
    ("batch", "n", "m", "d", "p"), [(11, 20, 7, 3, 2), (2, 140, 9, 5, 1), (1, 260, 4, 2, 3)]
)
def test_kernel_ridge_batched(dtype, kernel, batch, n, m, d, p):
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((batch, n, d)).astype(dtype)
    y = rng.standard_normal((batch, n, p)).astype(dtype)
    x_new = rng.standard_normal((batch, m, d)).astype(dtype)
    shift = rng.uniform(0.1, 0.5, batch)
    ell = 1.3
    k = _gram_ref(x, x, kernel, ell) + shift[:, None, None] * np.eye(n)
    alpha_ref = np.linalg.solve(k, y.astype(np.float64))
    pred_ref = _gram_ref(x_new, x, kernel, ell) @ alpha_ref
    tol = {np.float32: 2e-3, np.float64: 1e-9}[dtype]
    for xn in (None, x_new):
        alpha, pred, info = C.kernel_ridge_batched(x, y, shift, kernel, ell, xn)
        assert alpha.shape == (batch, n, p) and alpha.dtype == dtype
        assert np.all(info == 0) and info.dtype == np.int32
        assert np.abs(alpha - alpha_ref).max() <= tol * np.abs(alpha_ref).max()
        if xn is None:
            assert pred is None
        else:
            assert pred.shape == (batch, m, p) and pred.dtype == dtype
            assert np.abs(pred - pred_ref).max() <= tol * np.abs(alpha_ref).max()
    # the same Gram matrix as gram_forward, factored like ridge_solve_forward
    kg = C.gram_forward(x, None, kernel, ell)
    ridge_x, _, _ = C.ridge_solve_forward(kg, y, shift)
    assert np.abs(alpha - ridge_x).max() <= 10 * _tol(dtype, ridge_x) * n


@pytest.mark.parametrize("n", [4, 140])
def test_kernel_ridge_failure_gives_nan(n):
    batch = 9
    x = np.zeros((batch, n, 2))  # all points equal: K is all ones, rank one
    x[1:] = np.random.default_rng(0).standard_normal((batch - 1, n, 2))
    y = np.ones((batch, n, 1))
    shift = np.full(batch, 0.1)
    shift[0] = 0.0
    alpha, pred, info = C.kernel_ridge_batched(x, y, shift, 0, 1.0, np.ascontiguousarray(x[:, :3]))
    assert info[0] == 2 and np.all(info[1:] == 0)
    assert np.all(np.isnan(alpha[0])) and np.all(np.isnan(pred[0]))
    assert np.all(np.isfinite(alpha[1:])) and np.all(np.isfinite(pred[1:]))


# ---- kernel_ridge_batched on the fused route -------------------------------------------------
# On the own route (n <= 128, p <= 64, groups of 8) the engine builds each group's K in the SIMD
# lanes straight from the points; a group of fewer than 4 problems takes it too when n <= 16,
# else LAPACK with the Gram engine's matrix (fused_route in csrc/ridge_engine.cpp).
FUSED_SMALL_GROUP_MAX_N = 16


def _krr_ref(x, y, x_new, shift, kernel, ell):
    n = x.shape[1]
    k = _gram_ref(x, x, kernel, ell) + shift[:, None, None] * np.eye(n)
    alpha = np.linalg.solve(k, y.astype(np.float64))
    return alpha, _gram_ref(x_new, x, kernel, ell) @ alpha


def _check_krr(x, y, x_new, shift, kernel, ell, dtype):
    """kernel_ridge_batched with and without x_new against the float64 references."""
    alpha_ref, pred_ref = _krr_ref(x, y, x_new, shift, kernel, ell)
    tol = {np.float32: 2e-3, np.float64: 1e-9}[dtype] * np.abs(alpha_ref).max(initial=1.0)
    alpha = None
    for xn in (None, x_new):
        alpha, pred, info = C.kernel_ridge_batched(x, y, shift, kernel, ell, xn)
        assert alpha.shape == y.shape and alpha.dtype == dtype
        np.testing.assert_array_equal(info, 0)
        assert np.abs(alpha - alpha_ref).max(initial=0.0) <= tol
        if xn is None:
            assert pred is None
        else:
            assert pred.shape == (x.shape[0], x_new.shape[1], y.shape[2]) and pred.dtype == dtype
            assert np.abs(pred - pred_ref).max(initial=0.0) <= tol
    return alpha


# (batch, n): batches not a multiple of 8 (last groups of 7, 1, 1), groups of one at and just
# past the small-group limit, the own route's limit and just past it.
FUSED_CASES = [
    (1, 1),
    (7, 9),
    (9, FUSED_SMALL_GROUP_MAX_N),
    (1, FUSED_SMALL_GROUP_MAX_N + 1),
    (17, FUSED_SMALL_GROUP_MAX_N + 1),
    (12, 40),
    (9, OWN_MAX_N),
    (9, OWN_MAX_N + 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(("batch", "n"), FUSED_CASES)
def test_fused_kernel_ridge(dtype, kernel, batch, n):
    rng = np.random.default_rng(batch * 1000 + n + kernel)
    d, m, p = 3, 6, 2
    x = rng.standard_normal((batch, n, d)).astype(dtype)
    y = rng.standard_normal((batch, n, p)).astype(dtype)
    x_new = rng.standard_normal((batch, m, d)).astype(dtype)
    shift = rng.uniform(0.05, 0.5, batch)
    alpha = _check_krr(x, y, x_new, shift, kernel, 0.9, dtype)
    # the Gram engine's K factored by ridge_solve_forward: the same to rounding
    ridge_x, _, _ = C.ridge_solve_forward(C.gram_forward(x, None, kernel, 0.9), y, shift)
    assert np.abs(alpha - ridge_x).max() <= 10 * _tol(dtype, ridge_x) * n
    # a problem alone (a group of one) gives what it gives in its group, whatever its lane
    for i in {0, batch // 2, batch - 1}:
        one = slice(i, i + 1)
        a1, p1, _ = C.kernel_ridge_batched(x[one], y[one], shift[one], kernel, 0.9, x_new[one])
        _, pred, _ = C.kernel_ridge_batched(x, y, shift, kernel, 0.9, x_new)
        assert np.abs(a1[0] - alpha[i]).max() <= 10 * _tol(dtype, alpha) * n
        assert np.abs(p1[0] - pred[i]).max() <= 10 * _tol(dtype, alpha) * n


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "n", "d", "m", "p"),
    [
        (8, 8, 700, 70, 5),  # points in several blocks of dimensions, x_new in blocks of rows
        (8, OWN_MAX_N, 9, 70, 5),
        (11, 20, 0, 3, 1),  # no dimensions: K is all ones
        (9, 12, 2, 0, 3),  # no query points
        (9, 12, 2, 4, 0),  # no right-hand sides
        (8, 100, 70, 3, 2),  # one group alone, large n and d: the Gram engine's route
    ],
)
def test_fused_kernel_ridge_blocks_and_edges(dtype, batch, n, d, m, p):
    rng = np.random.default_rng(n + d + m + p)
    x = (rng.standard_normal((batch, n, d)) / np.sqrt(max(d, 1))).astype(dtype)
    y = rng.standard_normal((batch, n, p)).astype(dtype)
    x_new = (rng.standard_normal((batch, m, d)) / np.sqrt(max(d, 1))).astype(dtype)
    shift = rng.uniform(0.2, 0.5, batch)
    for kernel in (0, 4):
        _check_krr(x, y, x_new, shift, kernel, 1.1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n", "bad"), [(9, 8, 8), (17, 16, 3), (1, 12, 0), (12, 60, 6)])
def test_fused_failing_member(dtype, batch, n, bad):
    """A member with a duplicated point and no shift is singular (its second pivot is exactly
    zero): info = 2 and NaN for it alone; the rest of its group is unaffected."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((batch, n, 2)).astype(dtype)
    y = rng.standard_normal((batch, n, 1)).astype(dtype)
    x_new = rng.standard_normal((batch, 4, 2)).astype(dtype)
    x[bad, 1] = x[bad, 0]
    shift = np.full(batch, 0.3)
    shift[bad] = 0.0
    for kernel in sorted(KERNELS):
        alpha, pred, info = C.kernel_ridge_batched(x, y, shift, kernel, 1.0, x_new)
        good = np.arange(batch) != bad
        assert info[bad] == 2 and np.all(info[good] == 0)
        assert np.all(np.isnan(alpha[bad])) and np.all(np.isnan(pred[bad]))
        alpha_ref, pred_ref = _krr_ref(x[good], y[good], x_new[good], shift[good], kernel, 1.0)
        tol = {np.float32: 2e-3, np.float64: 1e-9}[dtype] * np.abs(alpha_ref).max(initial=1.0)
        assert np.abs(alpha[good] - alpha_ref).max(initial=0.0) <= tol
        assert np.abs(pred[good] - pred_ref).max(initial=0.0) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n"), [(9, 6), (1, 300)])
def test_check_finite_and_keep_l(dtype, batch, n):
    """check_finite=True: ValueError naming the first non-finite argument (k before b; x, x_new,
    y), also in k's upper triangle, which the factorisation never reads; keep_l=False: no L,
    the same x."""
    rng = np.random.default_rng(n)
    a = _spd(rng, batch, n, dtype)
    b = _rhs(rng, batch, n, 1, dtype)
    shift = np.full(batch, 0.5)
    x, l, info = C.ridge_solve_forward(a, b, shift)
    x2, l2, info2 = C.ridge_solve_forward(a, b, shift, keep_l=False, check_finite=True)
    assert l2 is None and l.shape == (batch, n, n)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(info2, info)
    a_bad = a.copy()
    a_bad[-1, 0, n - 1] = np.nan  # upper triangle, last member
    b_bad = b.copy()
    b_bad[-1, -1, 0] = np.inf
    assert np.all(np.isfinite(C.ridge_solve_forward(a_bad, b, shift)[0]))  # not checked
    for aa, bb, name in [(a_bad, b, "k"), (a, b_bad, "b"), (a_bad, b_bad, "k")]:
        with pytest.raises(ValueError, match=f"^{name}: contains NaN or infinite values$"):
            C.ridge_solve_forward(aa, bb, shift, keep_l=False, check_finite=True)
    pts = rng.standard_normal((batch, min(n, 20), 2)).astype(dtype)
    pts_bad = pts.copy()
    pts_bad[-1, -1, -1] = -np.inf
    y = rng.standard_normal((batch, pts.shape[1], 1)).astype(dtype)
    y_bad = y.copy()
    y_bad[-1, 0, 0] = np.nan
    for xx, xn, yy, name in [
        (pts_bad, pts, y_bad, "x"),
        (pts, pts_bad, y_bad, "x_new"),
        (pts, pts, y_bad, "y"),
        (pts, None, y_bad, "y"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}: contains NaN or infinite values$"):
            C.kernel_ridge_batched(xx, yy, shift, 0, 1.0, xn, True)
        C.kernel_ridge_batched(xx, yy, shift, 0, 1.0, xn)  # unchecked: NaN out, no error


def test_empty_batches_and_sizes():
    for batch, n, p in [(0, 4, 2), (2, 0, 3), (2, 3, 0), (9, 3, 0)]:
        a = np.broadcast_to(np.eye(n), (batch, n, n)).copy()
        b = np.ones((batch, n, p))
        x, l, info = C.ridge_solve_forward(a, b, np.ones(batch))
        assert x.shape == (batch, n, p) and l.shape == (batch, n, n) and info.shape == (batch,)
        assert np.all(info == 0)
        assert C.cholesky_solve(l, b).shape == (batch, n, p)
    alpha, pred, info = C.kernel_ridge_batched(
        np.zeros((2, 3, 1)), np.ones((2, 3, 1)), np.ones(2), 0, 1.0, np.zeros((2, 0, 1))
    )
    assert alpha.shape == (2, 3, 1) and pred.shape == (2, 0, 1) and np.all(info == 0)


def test_errors():
    a = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    b = np.ones((2, 3, 1))
    s = np.zeros(2)
    x = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="a:"):
        C.cholesky_forward(a[0], s[:1])
    with pytest.raises(ValueError, match="a: expected square"):
        C.cholesky_forward(np.ones((2, 3, 4)), s)
    with pytest.raises(TypeError, match="a:"):
        C.cholesky_forward(a.astype(np.int64), s)
    with pytest.raises(ValueError, match="a: expected a C-contiguous"):
        C.cholesky_forward(np.asfortranarray(a), s)
    with pytest.raises(TypeError, match="shift:"):
        C.cholesky_forward(a, s.astype(np.float32))
    with pytest.raises(ValueError, match="shift:"):
        C.cholesky_forward(a, np.zeros(3))
    with pytest.raises(ValueError, match="shift:"):
        C.ridge_solve_forward(a, b, np.zeros((2, 1)))
    with pytest.raises(TypeError, match="b:"):
        C.ridge_solve_forward(a, b.astype(np.float32), s)
    with pytest.raises(ValueError, match="b:"):
        C.ridge_solve_forward(a, np.ones((2, 4, 1)), s)
    with pytest.raises(ValueError, match="b:"):
        C.ridge_solve_forward(a, np.ones((3, 3, 1)), s)
    with pytest.raises(ValueError, match="k:"):
        C.ridge_solve_forward(np.ones((2, 3, 2)), b, s)
    with pytest.raises(ValueError, match="L:"):
        C.cholesky_solve(a[:, :2], b)
    with pytest.raises(TypeError, match="b:"):
        C.cholesky_solve(a, b.astype(np.float32))
    with pytest.raises(ValueError, match="b:"):
        C.cholesky_solve(a, np.ones((2, 3)))
    with pytest.raises(ValueError, match="kernel:"):
        C.kernel_ridge_batched(x, b, s, 5, 1.0, None)
    with pytest.raises(ValueError, match="lengthscale:"):
        C.kernel_ridge_batched(x, b, s, 0, 0.0, None)
    with pytest.raises(ValueError, match="lengthscale:"):
        C.kernel_ridge_batched(x, b, s, 0, float("nan"), None)
    with pytest.raises(ValueError, match="y:"):
        C.kernel_ridge_batched(x, np.ones((2, 4, 1)), s, 0, 1.0, None)
    with pytest.raises(TypeError, match="y:"):
        C.kernel_ridge_batched(x, b.astype(np.float32), s, 0, 1.0, None)
    with pytest.raises(ValueError, match="x_new:"):
        C.kernel_ridge_batched(x, b, s, 0, 1.0, np.zeros((2, 5, 3)))
    with pytest.raises(TypeError, match="x_new:"):
        C.kernel_ridge_batched(x, b, s, 0, 1.0, np.zeros((2, 5, 2), np.float32))
    with pytest.raises(ValueError, match="x:"):
        C.kernel_ridge_batched(x[0], b, s, 0, 1.0, None)
    with pytest.raises(ValueError, match="tile"):
        C._tiled_ridge_solve(a[0], b[0], 0.0, 0)
    with pytest.raises(ValueError, match="trans"):
        C._trsm_right_lower("X", a[0], b[0, :, 0][None])


_BASELINE_SCRIPT = """
import numpy as np
import fastamort._C as C
assert C.simd_isa() != "avx2+fma", C.simd_isa()
rng = np.random.default_rng(0)
for dtype, tol in ((np.float32, 1e-3), (np.float64, 1e-10)):
    g = rng.standard_normal((9, 20, 20))
    a = (g @ g.transpose(0, 2, 1) / 20 + np.eye(20)).astype(dtype)
    b = rng.standard_normal((9, 20, 5)).astype(dtype)
    x, l, info = C.ridge_solve_forward(a, b, np.zeros(9))
    ref = np.linalg.solve(a.astype(np.float64), b.astype(np.float64))
    assert np.all(info == 0) and np.abs(x - ref).max() <= tol * np.abs(ref).max()
    assert np.abs(C.cholesky_solve(l, b) - ref).max() <= tol * np.abs(ref).max()
    # kernel_ridge_batched on the fused route: K from the points in the lanes
    pts = rng.standard_normal((9, 20, 3))
    xn = rng.standard_normal((9, 4, 3))
    y = rng.standard_normal((9, 20, 2))
    shift = np.full(9, 0.3)
    k = np.exp(-0.5 * ((pts[:, :, None] - pts[:, None]) ** 2).sum(-1)) + 0.3 * np.eye(20)
    alpha_ref = np.linalg.solve(k, y)
    pred_ref = np.exp(-0.5 * ((xn[:, :, None] - pts[:, None]) ** 2).sum(-1)) @ alpha_ref
    alpha, pred, info = C.kernel_ridge_batched(
        pts.astype(dtype), y.astype(dtype), shift, 0, 1.0, xn.astype(dtype)
    )
    assert np.all(info == 0) and np.abs(alpha - alpha_ref).max() <= tol * np.abs(alpha_ref).max()
    assert np.abs(pred - pred_ref).max() <= tol * np.abs(alpha_ref).max()
print("ok")
"""


def test_baseline_isa_kernels():
    """The own kernels (the fused kernel ridge too) are compiled twice; FASTAMORT_ISA=baseline
    selects the portable copy."""
    env = dict(os.environ, FASTAMORT_ISA="baseline")
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("n", [1, 2, 37, TILED_MIN_N - 1, TILED_MIN_N + 1, 401])
def test_cholesky_narrowed_matches_float32_factor_of_the_shifted_matrix(n):
    """One pass narrows float64 K into the float32 factor of K + shift·I (lower triangle read,
    zeros above) and sums ‖K‖_F² in float64; both routes (serial, tiled) of the factor."""
    rng = np.random.default_rng(n)
    k = _spd(rng, 1, n, np.float64)[0]
    k_upper_garbage = k.copy()
    k_upper_garbage[np.triu_indices(n, 1)] = np.nan  # only the lower triangle is read
    lower, info, frobenius_sq = C.cholesky_narrowed(k_upper_garbage, 0.25)
    assert lower.dtype == np.float32 and lower.shape == (n, n) and info == 0
    assert np.all(np.triu(lower, 1) == 0)
    ref = np.linalg.cholesky(k + 0.25 * np.eye(n))
    assert np.abs(lower - ref).max() <= RTOL[np.float32] * np.abs(ref).max() * 10
    assert frobenius_sq == pytest.approx(float((k**2).sum()), rel=1e-13)


def test_cholesky_narrowed_reports_failure_and_checks_its_input():
    indefinite = np.diag([1.0, -1.0, 1.0])
    assert C.cholesky_narrowed(indefinite, 0.0)[1] == 2
    assert C.cholesky_narrowed(indefinite, 2.0)[1] == 0
    assert C.cholesky_narrowed(np.zeros((0, 0)), 1.0)[1] == 0
    with pytest.raises(ValueError, match="square"):
        C.cholesky_narrowed(np.zeros((3, 4)), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        C.cholesky_narrowed(np.eye(3, dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match="dimensions"):
        C.cholesky_narrowed(np.eye(3)[None], 1.0)


# --------------------------------------------------------------------------------------------
# The ridge backward's symmetric gradient w.r.t. K
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,p", [(1, 1), (256, 3), (257, 1), (521, 0), (521, 17), (1031, 64)])
def test_symmetric_rank2k_matches_the_full_product(dtype, n, p):
    """c = α(a bᵀ + b aᵀ) from the blocks at or below the diagonal: equal to the full GEMM,
    exactly symmetric, for orders around the 256 block and a batch of two."""
    rng = np.random.default_rng(n + p)
    a = rng.standard_normal((2, n, p)).astype(dtype)
    b = rng.standard_normal((2, n, p)).astype(dtype)
    c = C.symmetric_rank2k(a, b, -0.5)
    ref = -0.5 * (a.astype(np.float64) @ b.transpose(0, 2, 1) + b @ a.transpose(0, 2, 1))
    assert c.dtype == dtype and c.shape == (2, n, n)
    assert np.array_equal(c, c.transpose(0, 2, 1))
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(c - ref).max() <= RTOL[dtype] * scale * max(p, 1)


def test_symmetric_rank2k_checks_its_input():
    with pytest.raises(ValueError, match="b: expected the shape of a"):
        C.symmetric_rank2k(np.zeros((1, 3, 2)), np.zeros((1, 3, 3)), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        C.symmetric_rank2k(np.zeros((1, 3, 2)), np.zeros((1, 3, 2), dtype=np.float32), 1.0)


def test_large_ridge_backward_uses_the_symmetric_product(monkeypatch):
    """The cpp ridge backward at n ≥ SYMMETRIC_RANK2K_MIN_N takes K̄ from the C++ symmetric
    product, and its gradients equal the torch backend's."""
    import torch

    import fastamort
    from fastamort.ops import _cpp

    calls = []
    real = C.symmetric_rank2k
    monkeypatch.setattr(C, "symmetric_rank2k", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_cpp, "cpp_module", lambda: C)
    n = _cpp.SYMMETRIC_RANK2K_MIN_N + 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, dtype=torch.float64, generator=gen)
    k0 = fastamort.gram(x, lengthscale=2.0, backend="torch")
    b = torch.randn(n, 4, dtype=torch.float64, generator=gen)
    grads = {}
    for backend in ("cpp", "torch"):
        k = k0.clone().requires_grad_(True)
        lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        fastamort.ridge_solve(k, b, lam, backend=backend).square().sum().backward()
        grads[backend] = (k.grad, lam.grad)
    assert calls, "the C++ symmetric product did not run"
    for got, ref in zip(grads["cpp"], grads["torch"], strict=True):
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-10
