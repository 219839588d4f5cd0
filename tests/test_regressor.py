"""fastamort.KernelRidge: scikit-learn's estimator checks, equality with scikit-learn's
KernelRidge, torch in/out, the fast path, errors, and life without scikit-learn."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, run_without_sklearn

import fastamort
from fastamort import KernelRidge, NotPSDError, NumericalWarning
from fastamort._dual_solve import kernel_ridge_ref
from fastamort._pairwise import lengthscale_for
from fastamort.regressor import NotFittedError

try:  # scikit-learn is optional: without it only its comparisons and checks are skipped
    from sklearn.base import clone
    from sklearn.gaussian_process.kernels import Matern
    from sklearn.kernel_ridge import KernelRidge as SkKernelRidge
    from sklearn.utils.estimator_checks import parametrize_with_checks

    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")

RTOL = 1e-8  # float64 agreement with scikit-learn, relative to the largest value
SEEDS = (0, 1, 2)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def problem(seed: int, *, n: int = 47, m: int = 13, d: int = 5, targets: int | None = None):
    """Non-negative X (so chi2 kernels apply), n and m not round on purpose."""
    rng = np.random.RandomState(seed)
    x, x_test = rng.rand(n, d), rng.rand(m, d)
    w = rng.randn(d)
    shape = (n,) if targets is None else (n, targets)
    y = np.sin(3 * x @ w).reshape(n, *([1] * (len(shape) - 1))) + 0.3 * rng.randn(*shape)
    sw = rng.uniform(0.2, 3.0, size=n)
    return x, y, x_test, sw


# --------------------------------------------------------------------------------------
# scikit-learn's own estimator checks
# --------------------------------------------------------------------------------------
if HAVE_SKLEARN:

    @parametrize_with_checks(
        [
            KernelRidge(),
            KernelRidge(kernel="rbf"),
            KernelRidge(kernel="laplacian", gamma=0.3),
            KernelRidge(kernel="matern52"),
            KernelRidge(kernel="poly", degree=2),
            KernelRidge(kernel="precomputed"),
            KernelRidge(kernel="rbf", backend="torch"),
        ],
        expected_failed_checks=lambda est: {},  # none: every check passes (or skips: pandas)
    )
    def test_sklearn_estimator_checks(estimator, check):
        check(estimator)


# --------------------------------------------------------------------------------------
# Same results as scikit-learn's KernelRidge (float64, 1e-8 relative)
# --------------------------------------------------------------------------------------
def _row_kernel(a, b, scale=0.5):
    return float(np.exp(-scale * np.abs(a - b).sum()) + 0.1 * (a @ b))


SHARED = [
    ("linear", {}),
    ("rbf", {}),
    ("rbf", {"gamma": 2.5}),
    ("laplacian", {}),
    ("laplacian", {"gamma": 0.7}),
    ("poly", {}),
    ("polynomial", {"degree": 2, "gamma": 0.5, "coef0": 0.3}),
    ("sigmoid", {"gamma": 0.2, "coef0": 0.1}),
    ("cosine", {}),
    ("additive_chi2", {}),
    ("chi2", {"gamma": 0.8}),
    (_row_kernel, {"kernel_params": {"scale": 0.3}}),
]


@needs_sklearn
@pytest.mark.parametrize("targets", [None, 3], ids=["1d", "3-targets"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(
    "kernel,params", SHARED, ids=[k if isinstance(k, str) else "callable" for k, _ in SHARED]
)
def test_matches_sklearn(kernel, params, weighted, targets):
    for seed in SEEDS:
        x, y, x_test, sw = problem(seed, targets=targets)
        w = sw if weighted else None
        with warnings.catch_warnings():  # indefinite kernels fall back to lstsq in both
            warnings.simplefilter("ignore", UserWarning)
            ref = SkKernelRidge(alpha=0.4, kernel=kernel, **params).fit(x, y, sample_weight=w)
            ours = KernelRidge(alpha=0.4, kernel=kernel, **params).fit(x, y, sample_weight=w)
        assert ours.dual_coef_.shape == ref.dual_coef_.shape
        assert ours.dual_coef_.dtype == np.float64
        assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL, seed
        pred = ours.predict(x_test)
        assert pred.shape == ref.predict(x_test).shape and pred.dtype == np.float64
        assert rel_err(pred, ref.predict(x_test)) < RTOL, seed
        np.testing.assert_array_equal(ours.X_fit_, ref.X_fit_)
        assert ours.n_features_in_ == ref.n_features_in_


@needs_sklearn
@pytest.mark.parametrize("weighted", [False, True])
def test_precomputed_matches_sklearn(weighted):
    for seed in SEEDS:
        x, y, x_test, sw = problem(seed, targets=2)
        k, k_test = x @ x.T + 0.5, x_test @ x.T + 0.5
        w = sw if weighted else None
        ref = SkKernelRidge(alpha=0.3, kernel="precomputed").fit(k, y, sample_weight=w)
        ours = KernelRidge(alpha=0.3, kernel="precomputed").fit(k, y, sample_weight=w)
        assert rel_err(ours.predict(k_test), ref.predict(k_test)) < RTOL
        np.testing.assert_array_equal(k, x @ x.T + 0.5)  # the user's matrix is not touched


@needs_sklearn
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_precomputed_non_symmetric_matches_sklearn(weighted):
    """scipy's solve(assume_a="pos") reads the upper triangle of a non-symmetric K."""
    for seed in SEEDS:
        x, y, x_test, sw = problem(seed, targets=2)
        rng = np.random.RandomState(seed)
        n = len(x)
        k = x @ x.T + 0.5 + 0.3 * rng.rand(n, n) + 3.0 * np.eye(n)  # not symmetric, upper PD
        k_test = x_test @ x.T + 0.5
        w = sw if weighted else None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a Cholesky in both, no least-squares fallback
            ref = SkKernelRidge(alpha=0.3, kernel="precomputed").fit(k, y, sample_weight=w)
            ours = KernelRidge(alpha=0.3, kernel="precomputed").fit(k, y, sample_weight=w)
        assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL, seed
        assert rel_err(ours.predict(k_test), ref.predict(k_test)) < RTOL, seed
        tk, ty = torch.from_numpy(k), torch.from_numpy(y)
        tw = None if w is None else torch.from_numpy(w)
        got = KernelRidge(alpha=0.3, kernel="precomputed").fit(tk, ty, sample_weight=tw)
        assert rel_err(got.dual_coef_.numpy(), ref.dual_coef_) < RTOL, seed
        # per-target alphas read the same triangle
        ref = SkKernelRidge(alpha=[0.3, 1.1], kernel="precomputed").fit(k, y, sample_weight=w)
        ours = KernelRidge(alpha=[0.3, 1.1], kernel="precomputed").fit(k, y, sample_weight=w)
        assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL, seed
        # an indefinite upper triangle: both solve the whole non-symmetric K by least squares
        k_bad = k - 6.0 * np.eye(n)
        with pytest.warns(UserWarning, match="Singular matrix"):
            ref = SkKernelRidge(alpha=0.3, kernel="precomputed").fit(k_bad, y, sample_weight=w)
        with pytest.warns(UserWarning, match="Singular matrix"):
            ours = KernelRidge(alpha=0.3, kernel="precomputed").fit(k_bad, y, sample_weight=w)
        assert rel_err(ours.dual_coef_, ref.dual_coef_) < 1e-6, seed


@needs_sklearn
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_is_sklearn_gp_matern(nu):
    """matern12/32/52 with gamma = sklearn's GP Matern with length_scale = 1/sqrt(2·gamma)."""
    name = {0.5: "matern12", 1.5: "matern32", 2.5: "matern52"}[nu]
    for seed, gamma in zip(SEEDS, (None, 0.3, 4.0), strict=True):
        x, y, x_test, sw = problem(seed, targets=2)
        ell = lengthscale_for(name, 1.0 / x.shape[1] if gamma is None else gamma)
        kern = Matern(length_scale=ell, nu=nu)
        ref = SkKernelRidge(alpha=0.2, kernel="precomputed").fit(kern(x), y, sample_weight=sw)
        ours = KernelRidge(alpha=0.2, kernel=name, gamma=gamma).fit(x, y, sample_weight=sw)
        assert rel_err(ours.predict(x_test), ref.predict(kern(x_test, x))) < RTOL


@needs_sklearn
def test_per_target_alpha_and_scalar_weights_match_sklearn():
    x, y, x_test, _ = problem(3, targets=3)
    for alpha in ([0.1, 1.0, 0.1], np.array([0.5, 0.5, 0.5]), [2.0]):
        for sw in (None, 2.5, 3):
            ref = SkKernelRidge(alpha=alpha, kernel="rbf").fit(x, y, sample_weight=sw)
            ours = KernelRidge(alpha=alpha, kernel="rbf").fit(x, y, sample_weight=sw)
            assert rel_err(ours.predict(x_test), ref.predict(x_test)) < RTOL, (alpha, sw)
    with pytest.raises(ValueError, match="one value per target"):
        KernelRidge(alpha=[0.1, 1.0], kernel="rbf").fit(x, y)


@needs_sklearn
def test_alpha_of_any_size_one_shape_and_numpy_scalars_match_sklearn():
    x, y, x_test, _ = problem(22, targets=2)
    alphas = [
        np.array([[0.1]]),
        np.array([[[0.7]]]),
        np.array(0.3),
        np.float32(0.1),
        np.float64(0.2),
        np.array([0.2, 1.5]),
        np.array([0.4, 0.4], dtype=np.float32),
        torch.tensor([0.2, 1.5]),
    ]
    for alpha in alphas:
        sk_alpha = alpha.numpy() if isinstance(alpha, torch.Tensor) else alpha
        if np.ndim(alpha) > 2:  # scikit-learn fails to broadcast alpha[0] (shape (1, 1))
            sk_alpha = float(np.asarray(alpha).item())
        for targets in (y, y[:, 0]):
            if np.size(sk_alpha) > 1 and targets.ndim == 1:
                continue
            ref = SkKernelRidge(alpha=sk_alpha, kernel="rbf").fit(x, targets)
            ours = KernelRidge(alpha=alpha, kernel="rbf").fit(x, targets)
            assert ours.dual_coef_.shape == ref.dual_coef_.shape
            assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL, alpha
            assert rel_err(ours.predict(x_test), ref.predict(x_test)) < RTOL, alpha


@needs_sklearn
def test_alpha_array_entries_like_sklearn():
    """Negative entries: scikit-learn's result (lstsq fallback); NaN/inf: ValueError naming
    alpha; strings: TypeError; size > 1 in 2-D: ValueError; empty: IndexError."""
    x, y, _, _ = problem(23)
    for kernel, alpha in (("linear", [-1.0]), ("rbf", np.array([-0.01])), ("rbf", [-1e-3])):
        with pytest.warns(UserWarning, match="Singular matrix"):
            ref = SkKernelRidge(alpha=alpha, kernel=kernel).fit(x, y)
        with pytest.warns(UserWarning, match="Singular matrix"):
            ours = KernelRidge(alpha=alpha, kernel=kernel).fit(x, y)
        assert rel_err(ours.dual_coef_, ref.dual_coef_) < 1e-6, (kernel, alpha)
    # a negative alpha that leaves K + alpha·I positive definite: a plain Cholesky, no warning
    k = x @ x.T + 2.0 * np.eye(len(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = SkKernelRidge(alpha=[-0.5], kernel="precomputed").fit(k, y)
        ours = KernelRidge(alpha=[-0.5], kernel="precomputed").fit(k, y)
    assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL
    y2 = np.stack([y, -y], axis=1)
    cases = [
        (np.array([np.nan]), y, ValueError),
        (np.array([np.inf]), y, ValueError),
        (np.array([np.nan, 1.0]), y2, ValueError),
        (np.array([[0.1, 0.2]]), y2, ValueError),
        (["a"], y, TypeError),
        ([], y, IndexError),
    ]
    for alpha, targets, error in cases:
        with pytest.raises(error):
            SkKernelRidge(alpha=alpha).fit(x, targets)
        with pytest.raises(error, match="alpha") as info:
            KernelRidge(alpha=alpha).fit(x, targets)
        assert "lam" not in str(info.value)
    for alpha in (-1.0, np.nan):  # scalars: the parameter check of both
        with pytest.raises(ValueError) as ref_info:
            SkKernelRidge(alpha=alpha).fit(x, y)
        with pytest.raises(type(ref_info.value), match="alpha"):
            KernelRidge(alpha=alpha).fit(x, y)


@needs_sklearn
def test_poly_fractional_degree_nan_kernel_names_degree():
    x, y, _, _ = problem(24)
    for kernel in ("poly", "polynomial"):
        params = {"kernel": kernel, "degree": 2.5, "coef0": -1.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with pytest.raises(ValueError):
                SkKernelRidge(**params).fit(x, y)
        with pytest.raises(ValueError, match=r"degree=2\.5") as info:
            KernelRidge(**params).fit(x, y)
        message = str(info.value)
        assert "NaN" in message and "kernel=" in message and "k:" not in message
        with pytest.raises(ValueError, match="degree"):
            KernelRidge(**params).fit(torch.from_numpy(x), torch.from_numpy(y))
    # a fractional degree with a non-negative base is fine in both
    ref = SkKernelRidge(kernel="poly", degree=2.5).fit(x, y)
    ours = KernelRidge(kernel="poly", degree=2.5).fit(x, y)
    assert rel_err(ours.dual_coef_, ref.dual_coef_) < RTOL


@needs_sklearn
def test_column_target_keeps_its_shape_and_gamma_zero():
    x, y, x_test, _ = problem(4)
    y2 = y[:, None]
    for kernel in ("rbf", "laplacian"):
        ref = SkKernelRidge(kernel=kernel, gamma=0.0).fit(x, y2)
        ours = KernelRidge(kernel=kernel, gamma=0.0).fit(x, y2)
        assert ours.dual_coef_.shape == (x.shape[0], 1)
        assert ours.predict(x_test).shape == (x_test.shape[0], 1)
        assert rel_err(ours.predict(x_test), ref.predict(x_test)) < RTOL


@needs_sklearn
def test_sparse_input_matches_dense():
    sparse = pytest.importorskip("scipy.sparse")
    x, y, x_test, _ = problem(5)
    x[x < 0.5] = 0.0
    dense = KernelRidge(kernel="rbf").fit(x, y)
    sp = KernelRidge(kernel="rbf").fit(sparse.csr_matrix(x), y)
    np.testing.assert_allclose(sp.predict(sparse.csc_matrix(x_test)), dense.predict(x_test))


@needs_sklearn
def test_score_is_sklearn_r2_numpy_and_torch():
    x, y, _, sw = problem(6, targets=2)
    ref = SkKernelRidge(kernel="rbf").fit(x, y)
    ours = KernelRidge(kernel="rbf").fit(x, y)
    for w in (None, sw):
        expected = ref.score(x, y, sample_weight=w)
        assert ours.score(x, y, sample_weight=w) == pytest.approx(expected, rel=1e-10)
        tw = None if w is None else torch.from_numpy(w)
        got = ours.score(torch.from_numpy(x), torch.from_numpy(y), sample_weight=tw)
        assert got == pytest.approx(expected, rel=1e-10)


@needs_sklearn
def test_score_on_tensors_validates_y_and_sample_weight_like_sklearn():
    """The tensor path of score checks y and sample_weight as r2_score does (ValueError)."""
    rng = np.random.RandomState(21)
    x, y, x_test = rng.rand(20, 3), rng.randn(20, 2), rng.rand(5, 3)
    ref = SkKernelRidge(kernel="rbf").fit(x, y)
    ours = KernelRidge(kernel="rbf").fit(torch.from_numpy(x), torch.from_numpy(y))
    y_ok = rng.randn(5, 2)
    y_nan = y_ok.copy()
    y_nan[1, 1] = np.nan
    w_nan = np.array([1.0, np.nan, 1.0, 1.0, 1.0])
    cases = [
        ("y", rng.randn(2, 5), None),  # the transposed targets: inconsistent samples
        ("y", rng.randn(10), None),  # as many entries as y, not as many rows
        ("y", rng.randn(5), None),  # one output, the model has two
        ("y", rng.randn(5, 3), None),
        ("y", rng.randn(5, 2, 1), None),
        ("y", y_nan, None),
        ("sample_weight", y_ok, np.ones(4)),
        ("sample_weight", y_ok, w_nan),
        ("sample_weight", y_ok, np.zeros(5)),
        ("sample_weight", y_ok, np.ones((5, 1))),
        ("sample_weight", y_ok, 2.0),
    ]
    for name, y_bad, w in cases:
        with pytest.raises(ValueError):
            ref.score(x_test, y_bad, sample_weight=w)
        tw = torch.from_numpy(w) if isinstance(w, np.ndarray) else w
        with pytest.raises(ValueError, match=name):
            ours.score(torch.from_numpy(x_test), torch.from_numpy(y_bad), sample_weight=tw)
    # valid input, negative weights included (r2_score accepts them): sklearn's value
    for w in (None, np.array([1.0, -0.5, 2.0, 1.0, 0.3])):
        tw = None if w is None else torch.from_numpy(w)
        got = ours.score(torch.from_numpy(x_test), torch.from_numpy(y_ok), sample_weight=tw)
        assert got == pytest.approx(ref.score(x_test, y_ok, sample_weight=w), rel=1e-10)


@needs_sklearn
def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    x, y, _, _ = problem(7)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    model = KernelRidge(kernel="rbf").fit(frame, y)
    np.testing.assert_array_equal(model.feature_names_in_, frame.columns.to_numpy())


# --------------------------------------------------------------------------------------
# Singular and ill-conditioned fits
# --------------------------------------------------------------------------------------
@needs_sklearn
def test_singular_float64_falls_back_to_lstsq_like_sklearn():
    k = np.ones((5, 5))  # rank 1: the Cholesky breaks down at the second pivot, exactly
    y = np.arange(5.0)
    with pytest.warns(UserWarning, match="Singular matrix") as ref_warn:
        ref = SkKernelRidge(alpha=0.0, kernel="precomputed").fit(k, y)
    with pytest.warns(UserWarning, match="Singular matrix") as our_warn:
        ours = KernelRidge(alpha=0.0, kernel="precomputed").fit(k, y)
    assert str(our_warn[0].message) == str(ref_warn[0].message)
    assert our_warn[0].filename == __file__  # points at the caller
    np.testing.assert_allclose(ours.dual_coef_, ref.dual_coef_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict(k[:2]), ref.predict(k[:2]), rtol=1e-12)


@needs_sklearn
def test_mixed_precision_solve_matches_sklearn(monkeypatch):
    """The float32-factor + float64-refinement solve gives scikit-learn's float64 answer, or
    declines (indefinite or ill-conditioned systems) and the float64 Cholesky/lstsq runs."""
    import fastamort._dual_solve as rk

    outcomes = []
    real = rk.solve_mixed

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        outcomes.append(out is not None)
        return out

    monkeypatch.setattr("fastamort.ops.ridge_solve_mixed.MIXED_MIN_N", 1)
    monkeypatch.setattr(rk, "solve_mixed", spy)
    # additive_chi2 is indefinite: no float32 factor, then float64 fails too and lstsq runs
    cases = [("rbf", 0.4, True), ("laplacian", 1e-3, True), ("additive_chi2", 0.4, False)]
    for kernel, alpha, accepted in cases:
        outcomes.clear()
        x, y, x_test, sw = problem(18, n=120, targets=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = SkKernelRidge(alpha=alpha, kernel=kernel).fit(x, y, sample_weight=sw)
            ours = KernelRidge(alpha=alpha, kernel=kernel).fit(x, y, sample_weight=sw)
        assert outcomes == [accepted], kernel
        assert rel_err(ours.predict(x_test), ref.predict(x_test)) < RTOL, kernel


def test_mixed_precision_declines_when_float32_cannot_converge():
    """κ = 1e9: κ·eps₃₂ ≫ 1, so the refinement cannot reach float64 accuracy and declines."""
    from fastamort._dual_solve import solve_dual, solve_mixed

    g = torch.Generator().manual_seed(20)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    k = (q * torch.logspace(0, -9, 60, dtype=torch.float64)) @ q.T
    k = 0.5 * (k + k.T)
    b = torch.randn(60, 2, generator=g, dtype=torch.float64)
    assert solve_mixed(k, b, 0.0) is None
    assert solve_mixed(k, b, 1e-2) is not None  # κ ≈ 100 with the ridge: accepted
    exact = torch.linalg.solve(k + 1e-2 * torch.eye(60, dtype=torch.float64), b)
    assert rel_err(solve_mixed(k, b, 1e-2), exact) < 1e-12
    assert rel_err(solve_dual(k, b, np.array([0.0]), None), torch.linalg.solve(k, b)) < 1e-5


@needs_sklearn
def test_mixed_precision_at_default_size():
    import fastamort._dual_solve as rk
    import fastamort.ops.ridge_solve_mixed as rsm

    x, y, x_test, _ = problem(19, n=rsm.MIXED_MIN_N + 11, m=40, d=8)
    k = torch.from_numpy(SkKernelRidge(kernel="rbf")._get_kernel(x))
    assert rk.solve_mixed(k, torch.from_numpy(y)[:, None], 1.0) is not None
    ref = SkKernelRidge(kernel="rbf").fit(x, y).predict(x_test)
    assert rel_err(KernelRidge(kernel="rbf").fit(x, y).predict(x_test), ref) < RTOL


def test_float32_not_psd_gives_guidance():
    k = -np.eye(4, dtype=np.float32)  # negative definite: no jitter helps
    model = KernelRidge(alpha=0.0, kernel="precomputed", dtype=np.float32)
    with pytest.warns(NumericalWarning), pytest.raises(NotPSDError) as info:
        model.fit(k, np.ones(4, dtype=np.float32))
    message = str(info.value)
    assert "increase alpha" in message.lower() and "float64" in message
    assert isinstance(info.value, ValueError)


def test_float32_torch_not_psd_gives_guidance():
    model = KernelRidge(alpha=0.0, kernel="precomputed")
    with pytest.warns(NumericalWarning), pytest.raises(NotPSDError) as info:
        model.fit(-torch.eye(4), torch.ones(4))
    message = str(info.value)
    assert "increase alpha" in message.lower() and "float64" in message
    assert "float32" in message and "lam" not in message


def test_float32_close_to_float64():
    x, y, x_test, sw = problem(8, n=300, m=50)
    ref = KernelRidge(alpha=0.5, kernel="rbf").fit(x, y, sample_weight=sw).predict(x_test)
    model = KernelRidge(alpha=0.5, kernel="rbf", dtype="float32")
    pred = model.fit(x.astype(np.float32), y, sample_weight=sw).predict(x_test)
    assert pred.dtype == np.float32 and model.dual_coef_.dtype == np.float32
    assert rel_err(pred, ref) < 1e-4


# --------------------------------------------------------------------------------------
# Torch in → torch out; the fast engines run
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "device", [pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else []) for d in DEVICES]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["rbf", "matern32", "poly"])
def test_torch_in_torch_out(device, dtype, kernel):
    x, y, x_test, sw = problem(9, targets=2)
    ref = KernelRidge(alpha=0.5, kernel=kernel).fit(x, y, sample_weight=sw).predict(x_test)
    to = {"device": device, "dtype": dtype}
    model = KernelRidge(alpha=0.5, kernel=kernel).fit(
        torch.tensor(x, **to), torch.tensor(y, **to), sample_weight=torch.tensor(sw, **to)
    )
    assert isinstance(model.dual_coef_, torch.Tensor) and isinstance(model.X_fit_, torch.Tensor)
    assert model.dual_coef_.device.type == device and model.dual_coef_.dtype == dtype
    pred = model.predict(torch.tensor(x_test, **to))
    assert isinstance(pred, torch.Tensor)
    assert pred.device.type == device and pred.dtype == dtype and pred.shape == ref.shape
    assert rel_err(pred.cpu(), ref) < (1e-10 if dtype == torch.float64 else 2e-4)
    # a torch-fitted model also predicts NumPy input, returning NumPy
    assert isinstance(model.predict(x_test), np.ndarray)


def test_numpy_fit_on_explicit_device_and_integer_tensor():
    x, y, x_test, _ = problem(10)
    ref = KernelRidge(kernel="rbf").fit(x, y).predict(x_test)
    model = KernelRidge(kernel="rbf", device="cpu").fit(x, y)
    assert rel_err(model.predict(torch.from_numpy(x_test)).numpy(), ref) < 1e-12
    xi = torch.randint(0, 5, (20, 3))
    out = KernelRidge(kernel="rbf").fit(xi, torch.ones(20)).predict(xi)
    assert out.dtype == torch.float64  # integer input: computed and returned in float64


@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "matern12", "matern32", "matern52"])
def test_native_kernels_use_fused_engine(kernel):
    """fit = gram + ridge_solve; predict = gram_matmul only (no test × train matrix)."""
    x, y, x_test, _ = problem(11, targets=2)
    model = KernelRidge(kernel=kernel, gamma=0.7)
    with fastamort.record_backends() as fit_ops:
        model.fit(x, y)
    with fastamort.record_backends() as predict_ops:
        model.predict(x_test)
    expected = "cpp" if fastamort.backend_report()["cpp"] == "available" else "torch"
    assert ("gram", expected) in fit_ops and ("ridge_solve", expected) in fit_ops
    assert predict_ops == [("gram_matmul", expected)]


def test_backend_torch_matches_auto():
    x, y, x_test, _ = problem(12)
    a = KernelRidge(kernel="laplacian").fit(x, y).predict(x_test)
    with fastamort.record_backends() as ops:
        b = KernelRidge(kernel="laplacian", backend="torch").fit(x, y).predict(x_test)
    assert {name for _, name in ops} == {"torch"}
    assert rel_err(b, a) < 1e-12


@needs_sklearn
def test_ref_matches_sklearn():
    """The plain-torch baseline of the benchmark computes the same thing."""
    x, y, x_test, _ = problem(13)
    ref = SkKernelRidge(alpha=0.7, kernel="rbf", gamma=0.4).fit(x, y).predict(x_test)
    got = kernel_ridge_ref(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test), 0.7, 0.4
    )
    assert rel_err(got.numpy(), ref) < RTOL


# --------------------------------------------------------------------------------------
# Estimator plumbing: params, clone, pickle, inputs untouched
# --------------------------------------------------------------------------------------
@needs_sklearn
def test_params_clone_pickle():
    model = KernelRidge(
        alpha=0.3, kernel="matern32", gamma=0.2, backend="torch", device="cpu", dtype=torch.float64
    )
    params = model.get_params()
    assert params == {
        "alpha": 0.3,
        "kernel": "matern32",
        "gamma": 0.2,
        "degree": 3,
        "coef0": 1,
        "kernel_params": None,
        "backend": "torch",
        "device": "cpu",
        "dtype": torch.float64,
    }
    assert model.set_params(alpha=2.0) is model and model.alpha == 2.0
    assert clone(model).get_params() == model.get_params()
    x, y, x_test, _ = problem(14)
    for fit_x, fit_y in ((x, y), (torch.from_numpy(x), torch.from_numpy(y))):
        model.fit(fit_x, fit_y)
        again = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(
            np.asarray(again.predict(x_test)), np.asarray(model.predict(x_test))
        )


def test_fit_does_not_modify_inputs():
    x, y, x_test, sw = problem(15, targets=2)
    copies = [a.copy() for a in (x, y, sw)]
    KernelRidge(kernel="rbf").fit(x, y, sample_weight=sw).predict(x_test)
    for a, b in zip((x, y, sw), copies, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Errors: the same exception types as scikit-learn
# --------------------------------------------------------------------------------------
def _bad_inputs():
    x, y, _, sw = problem(16)
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    return [
        ("nan-X", {}, (nan_x, y), {}),
        ("inf-y", {}, (x, np.where(np.arange(len(y)) == 2, np.inf, y)), {}),
        ("1d-X", {}, (x[:, 0], y), {}),
        ("y-None", {}, (x, None), {}),
        ("n-mismatch", {}, (x, y[:-1]), {}),
        ("bad-kernel", {"kernel": "nope"}, (x, y), {}),
        ("negative-alpha", {"alpha": -1.0}, (x, y), {}),
        ("negative-gamma", {"kernel": "rbf", "gamma": -1.0}, (x, y), {}),
        ("weights-shape", {}, (x, y), {"sample_weight": sw[:-1]}),
        ("weights-zero", {}, (x, y), {"sample_weight": np.zeros_like(sw)}),
        ("precomputed-not-square", {"kernel": "precomputed"}, (x, y), {}),
        ("chi2-negative", {"kernel": "chi2", "gamma": 1.0}, (x - 0.5, y), {}),
        ("complex", {}, (x + 1j, y), {}),
        ("empty", {}, (x[:0], y[:0]), {}),
    ]


@needs_sklearn
@pytest.mark.parametrize(
    "name,params,args,kwargs", [pytest.param(*case, id=case[0]) for case in _bad_inputs()]
)
def test_fit_errors_like_sklearn(name, params, args, kwargs):
    with pytest.raises(Exception) as ref:
        SkKernelRidge(**params).fit(*args, **kwargs)
    with pytest.raises(type(ref.value)):
        KernelRidge(**params).fit(*args, **kwargs)
    if name not in ("bad-kernel", "negative-alpha", "negative-gamma", "y-None"):
        # the torch path validates by itself: a ValueError as well
        targs = [None if a is None else torch.as_tensor(a) for a in args]
        tkw = {k: torch.as_tensor(v) for k, v in kwargs.items()}
        with pytest.raises(ValueError):
            KernelRidge(**params).fit(*targs, **tkw)


def test_predict_errors_like_sklearn():
    x, y, x_test, _ = problem(17)
    with pytest.raises(NotFittedError):
        KernelRidge().predict(x_test)
    model = KernelRidge(kernel="rbf").fit(x, y)
    for bad in (x_test[:, :2], x_test[:, 0], np.full_like(x_test, np.nan)):
        with pytest.raises(ValueError):
            model.predict(bad)
        with pytest.raises(ValueError):
            model.predict(torch.from_numpy(np.ascontiguousarray(bad)))
    pre = KernelRidge(kernel="precomputed").fit(x @ x.T, y)
    with pytest.raises(ValueError):
        pre.predict(x_test @ x[:-1].T)
    with pytest.raises(ValueError, match="negative weights"):
        KernelRidge().fit(x, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="dtype"):
        KernelRidge(dtype="int32").fit(x, y)


# --------------------------------------------------------------------------------------
# Without scikit-learn
# --------------------------------------------------------------------------------------
NO_SKLEARN = r"""
import numpy as np, torch, fastamort
assert "sklearn" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
from fastamort.regressor import HAVE_SKLEARN, NotFittedError
assert not HAVE_SKLEARN
rng = np.random.RandomState(0)
x, y = rng.rand(30, 3), rng.randn(30, 2)
m = fastamort.KernelRidge(alpha=0.5, kernel="rbf").fit(x, y, sample_weight=rng.rand(30) + 0.1)
print(repr(m.predict(x[:2]).tolist()))
print(m.score(x, y))
def k(a, b):
    return float(a @ b)
print(repr(fastamort.KernelRidge(kernel=k).fit(x, y).predict(x[:2]).tolist()))
print(repr(fastamort.KernelRidge(kernel="linear").fit(x, y).predict(x[:2]).tolist()))
assert m.set_params(alpha=2.0).get_params()["alpha"] == 2.0
expect_value_error(
    lambda: fastamort.KernelRidge().predict(x),
    lambda: m.predict(x[:, :2]),
    lambda: fastamort.KernelRidge(kernel="nope").fit(x, y),
)
"""


@needs_sklearn
def test_works_without_sklearn():
    lines = run_without_sklearn(NO_SKLEARN)
    rng = np.random.RandomState(0)
    x, y = rng.rand(30, 3), rng.randn(30, 2)
    sw = rng.rand(30) + 0.1
    ref = SkKernelRidge(alpha=0.5, kernel="rbf").fit(x, y, sample_weight=sw)
    assert rel_err(np.array(eval(lines[0])), ref.predict(x[:2])) < RTOL
    assert float(lines[1]) == pytest.approx(ref.score(x, y), rel=1e-10)
    lin = SkKernelRidge(kernel="linear").fit(x, y).predict(x[:2])
    assert rel_err(np.array(eval(lines[2])), lin) < RTOL  # callable == linear here
    assert rel_err(np.array(eval(lines[3])), lin) < RTOL
