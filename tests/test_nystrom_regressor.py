"""fastamort.NystromKernelRidge: scikit-learn's estimator checks, parity with dense float64
solves, the convergence warning, torch in/out, sample weights, multi-output, errors, the state
kept by a failed fit, streaming, and life without scikit-learn."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, exact_gram, run_without_sklearn

import fastamort
from fastamort import KernelRidge, NystromKernelRidge, record_backends
from fastamort.nystrom_regressor import ConvergenceWarning
from fastamort.regressor import NotFittedError

try:  # scikit-learn is optional: without it only its comparisons and checks are skipped
    from sklearn.base import clone
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.estimator_checks import parametrize_with_checks

    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
needs_cpp = pytest.mark.skipif(
    fastamort.backend_report()["cpp"] != "available", reason="extension not built"
)

KERNELS = ["rbf", "laplacian", "matern12", "matern32", "matern52"]
# float64 kernel values and CG run to round-off: the model of the dense float64 solve
TIGHT = {"tol": 1e-13, "max_iter": 500, "dtype": np.float64}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def problem(seed: int = 0, *, n: int = 61, d: int = 3, targets: int | None = None):
    """Points in [0, 1]^d, a smooth target plus noise; n not round on purpose."""
    rng = np.random.RandomState(seed)
    x, x_test = rng.rand(n, d), rng.rand(17, d)
    shape = (n,) if targets is None else (n, targets)
    base = np.sin(4 * x[:, 0]) + x[:, -1] ** 2
    y = base.reshape(n, *([1] * (len(shape) - 1))) + 0.1 * rng.randn(*shape)
    return x, y, x_test


def engine_kernel(kernel: str) -> str:
    return "gaussian" if kernel == "rbf" else kernel


def dense_nystrom(x, y, x_test, centers, kernel, ell, alpha, sw=None):
    """Predictions of the Nyström KRR solution by a dense float64 solve of
    (K_nmᵀ W K_nm + α K_mm) w = K_nmᵀ W y (direct differences for the kernel values)."""
    t = torch.from_numpy
    k_nm = exact_gram(t(x), t(centers), engine_kernel(kernel), ell)
    k_mm = exact_gram(t(centers), t(centers), engine_kernel(kernel), ell)
    w = torch.ones(x.shape[0], dtype=torch.float64) if sw is None else t(sw)
    y2 = t(y).reshape(x.shape[0], -1)
    wk = w[:, None] * k_nm
    coef = torch.linalg.solve(k_nm.mT @ wk + alpha * k_mm, wk.mT @ y2)
    pred = exact_gram(t(x_test), t(centers), engine_kernel(kernel), ell) @ coef
    return pred.reshape(x_test.shape[0], *y.shape[1:]).numpy()


# --------------------------------------------------------------------------------------
# scikit-learn's own estimator checks
# --------------------------------------------------------------------------------------
LOOSE_TOL = (
    "CG stops at the default tol=1e-4 and the kernel values are float32 by default, so fits "
    "with weights and with repeated rows agree to about 1e-5, not to the check's 1e-7; with a "
    "tight tol and float64 they do (test_sample_weights_equal_repeated_rows_with_a_tight_tol)"
)

if HAVE_SKLEARN:

    @parametrize_with_checks(
        [
            NystromKernelRidge(),
            NystromKernelRidge(
                solver="direct", n_components=40, kernel="matern32", dtype=np.float64
            ),
        ],
        expected_failed_checks=lambda est: (
            {}
            if est.solver == "direct"
            else {
                "check_sample_weight_equivalence_on_dense_data": LOOSE_TOL,
                "check_sample_weight_equivalence_on_sparse_data": LOOSE_TOL,
            }
        ),
    )
    def test_sklearn_estimator_checks(estimator, check):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_components=", category=UserWarning)
            check(estimator)


@needs_sklearn
def test_sample_weights_equal_repeated_rows_with_a_tight_tol():
    """scikit-learn's checks: all rows are centres there (n < n_components), so weights and
    repeated rows give the same exact KRR solution, which CG reaches with a tight tol."""
    from sklearn.utils.estimator_checks import (
        check_sample_weight_equivalence_on_dense_data,
        check_sample_weight_equivalence_on_sparse_data,
    )

    model = NystromKernelRidge(**TIGHT)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_components=", category=UserWarning)
        check_sample_weight_equivalence_on_dense_data("NystromKernelRidge", model)
        check_sample_weight_equivalence_on_sparse_data("NystromKernelRidge", model)


# --------------------------------------------------------------------------------------
# Parity with dense float64 solves
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("solver", ["pcg", "direct"])
def test_all_rows_as_centres_is_kernel_ridge(kernel, solver):
    """m = n, centres = the data: KernelRidge's objective ‖y − Kc‖² + α cᵀKc, same predictions."""
    x, y, x_test = problem(0)
    n = x.shape[0]
    model = NystromKernelRidge(
        alpha=0.1, kernel=kernel, gamma=2.0, n_components=n, solver=solver, **TIGHT
    ).fit(x, y)
    exact = KernelRidge(alpha=0.1, kernel=kernel, gamma=2.0).fit(x, y)
    assert model.n_components_ == n
    assert rel_err(model.predict(x_test), exact.predict(x_test)) < 1e-6
    assert rel_err(model.predict(x), exact.predict(x)) < 1e-6


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("solver", ["pcg", "direct"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_a_dense_solve_of_the_nystrom_normal_equations(kernel, solver, weighted):
    x, y, x_test = problem(1, n=83, targets=2)
    sw = np.random.RandomState(3).uniform(0.2, 3.0, size=x.shape[0]) if weighted else None
    model = NystromKernelRidge(
        alpha=0.05, kernel=kernel, gamma=1.5, n_components=19, solver=solver,
        random_state=0, **TIGHT,
    ).fit(x, y, sample_weight=sw)  # fmt: skip
    assert model.centers_.shape == (19, 3)
    ref = dense_nystrom(x, y, x_test, model.centers_, kernel, model.lengthscale_, 0.05, sw)
    assert rel_err(model.predict(x_test), ref) < 1e-6


def test_same_centres_and_model_as_sklearn_nystroem_ridge():
    """The same random_state draws the same centres as Nystroem, and the same α the same model."""
    x, y, x_test = problem(2, n=300, d=4)
    ours = NystromKernelRidge(alpha=0.3, gamma=0.7, n_components=40, random_state=5, **TIGHT)
    ours.fit(x, y)
    if not HAVE_SKLEARN:
        pytest.skip("scikit-learn is not installed")
    nys = Nystroem(gamma=0.7, n_components=40, random_state=5)
    pipe = make_pipeline(nys, Ridge(alpha=0.3, fit_intercept=False)).fit(x, y)
    np.testing.assert_array_equal(ours.centers_, nys.components_)
    assert rel_err(ours.predict(x_test), pipe.predict(x_test)) < 1e-6


def test_direct_equals_pcg_and_lengthscale_equals_gamma():
    x, y, x_test = problem(3, n=120)
    pcg = NystromKernelRidge(alpha=0.2, gamma=2.0, n_components=30, random_state=1, **TIGHT)
    direct = NystromKernelRidge(alpha=0.2, lengthscale=0.5, n_components=30, random_state=1,
                                solver="direct", dtype=np.float64)  # fmt: skip
    pcg.fit(x, y)
    direct.fit(x, y)
    assert pcg.lengthscale_ == direct.lengthscale_ == 0.5  # γ = 1/(2ℓ²)
    assert direct.n_iter_ == 1 and direct.residual_ < 1e-10
    assert rel_err(pcg.predict(x_test), direct.predict(x_test)) < 1e-7
    alias = NystromKernelRidge(alpha=0.2, kernel="gaussian", gamma=2.0, n_components=30,
                               random_state=1, **TIGHT).fit(x, y)  # fmt: skip
    np.testing.assert_array_equal(alias.predict(x_test), pcg.predict(x_test))


def test_float32_kernel_values_keep_the_float64_model():
    """The default dtype: float32 distances and kernel values, float64 products and solve."""
    x, y, x_test = problem(4, n=400, d=5)
    f64 = NystromKernelRidge(alpha=0.1, gamma=1.0, n_components=60, random_state=0, **TIGHT)
    f32 = NystromKernelRidge(**{**f64.get_params(), "dtype": None})
    f64.fit(x, y)
    with record_backends() as ran:
        f32.fit(x, y)
    backend = "cpp" if fastamort.backend_report()["cpp"] == "available" else "torch"
    assert ("normal_matmul", backend) in ran
    assert f32.dual_coef_.dtype == np.float64
    assert rel_err(f32.predict(x_test), f64.predict(x_test)) < 1e-4
    explicit = NystromKernelRidge(**{**f64.get_params(), "dtype": "float32"}).fit(x, y)
    np.testing.assert_array_equal(explicit.predict(x_test), f32.predict(x_test))


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_an_offset_of_the_data_costs_no_digits(dtype):
    """Distances in float32 are taken on data centred in float64: shifting X by 10⁵ (float32
    resolves 0.008 there) changes nothing but round-off."""
    x, y, x_test = problem(18, n=200, d=4)
    kw = {"alpha": 0.1, "gamma": 2.0, "n_components": 50, "random_state": 0, "dtype": dtype}
    near = NystromKernelRidge(**kw, **{"tol": 1e-10, "max_iter": 500}).fit(x, y)
    far = NystromKernelRidge(**kw, **{"tol": 1e-10, "max_iter": 500}).fit(x + 1e5, y)
    assert rel_err(far.predict(x_test + 1e5), near.predict(x_test)) < 1e-4


@needs_cpp
def test_fit_runs_the_fused_cpp_op():
    x, y, _ = problem(5)
    with record_backends() as ran:
        NystromKernelRidge(n_components=20, random_state=0).fit(x, y)
    ops = {op for op, _ in ran}
    assert ("normal_matmul", "cpp") in ran and "normal_matmul" in ops
    assert all(backend == "cpp" for _, backend in ran), ran


@pytest.mark.triton
@pytest.mark.parametrize("solver", ["pcg", "direct"])
def test_triton_backend_matches_the_torch_reference(solver):
    """On CUDA, or on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1)."""
    interpret = fastamort._backends.interpreter_enabled()
    if fastamort.backend_report()["triton"].startswith("triton does not import") or not (
        interpret or torch.cuda.is_available()
    ):
        pytest.skip("needs Triton with CUDA, or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
    x, y, x_test = (torch.from_numpy(a).to(device) for a in problem(19, n=40))
    kw = {"alpha": 0.1, "n_components": 9, "random_state": 0, "solver": solver, **TIGHT}
    with record_backends() as ran:
        fast = NystromKernelRidge(backend="triton", **kw).fit(x, y)
        pred = fast.predict(x_test)
    assert {backend for _, backend in ran} == {"triton"}
    assert ("normal_matmul", "triton") in ran
    ref = NystromKernelRidge(backend="torch", **kw).fit(x, y).predict(x_test)
    assert rel_err(pred.cpu(), ref.cpu()) < 1e-9


# --------------------------------------------------------------------------------------
# Solver behaviour: the convergence warning, n_iter_, residual_
# --------------------------------------------------------------------------------------
def test_warns_when_cg_stops_on_max_iter():
    x, y, _ = problem(6, n=200)
    model = NystromKernelRidge(alpha=1e-3, gamma=3.0, n_components=80, max_iter=2, tol=1e-12)
    with pytest.warns(ConvergenceWarning, match=r"max_iter=2 iterations with relative residual"):
        model.fit(x, y)
    assert model.n_iter_ == 2 and model.residual_ > 1e-12


def test_no_warning_when_converged_and_the_attributes_say_so():
    x, y, _ = problem(7, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = NystromKernelRidge(alpha=0.5, n_components=50, random_state=0).fit(x, y)
    assert 1 <= model.n_iter_ < 100
    assert model.residual_ <= 1e-4


def test_n_components_above_n_is_clipped_with_a_warning():
    x, y, _ = problem(8, n=30)
    with pytest.warns(UserWarning, match="n_components=1000 > n_samples=30"):
        model = NystromKernelRidge().fit(x, y)
    assert model.n_components_ == 30 and model.centers_.shape == (30, 3)


def test_given_centres():
    x, y, x_test = problem(9, n=90)
    centres = np.random.RandomState(1).rand(12, 3)
    model = NystromKernelRidge(alpha=0.1, centers=centres, n_components=5, **TIGHT).fit(x, y)
    assert model.n_components_ == 12
    np.testing.assert_array_equal(model.centers_, centres)
    ref = dense_nystrom(x, y, x_test, centres, "rbf", model.lengthscale_, 0.1)
    assert rel_err(model.predict(x_test), ref) < 1e-6


# --------------------------------------------------------------------------------------
# Sample weights and several targets
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["pcg", "direct"])
def test_integer_weights_equal_repeated_rows_for_fixed_centres(solver):
    x, y, x_test = problem(10, n=40)
    sw = np.random.RandomState(0).randint(0, 4, size=40)
    centres = x[:15]
    kw = {"alpha": 0.1, "centers": centres, "solver": solver, **TIGHT}
    weighted = NystromKernelRidge(**kw).fit(x, y, sample_weight=sw)
    repeated = NystromKernelRidge(**kw).fit(np.repeat(x, sw, axis=0), np.repeat(y, sw))
    assert rel_err(weighted.predict(x_test), repeated.predict(x_test)) < 1e-7


def test_targets_together_equal_targets_one_by_one():
    x, y, x_test = problem(11, n=150, targets=3)
    kw = {"alpha": 0.1, "n_components": 40, "random_state": 2, **TIGHT}
    together = NystromKernelRidge(**kw).fit(x, y)
    assert together.dual_coef_.shape == (40, 3)
    pred = together.predict(x_test)
    assert pred.shape == (17, 3)
    for q in range(3):
        alone = NystromKernelRidge(**kw).fit(x, y[:, q])
        assert rel_err(pred[:, q], alone.predict(x_test)) < 1e-8
    column = NystromKernelRidge(**kw).fit(x, y[:, :1])
    assert column.predict(x_test).shape == (17, 1)


# --------------------------------------------------------------------------------------
# torch in, torch out
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_on_its_device(device, dtype):
    x, y, x_test = problem(12, n=100, targets=2)
    tx, ty, tt = (torch.from_numpy(a).to(device=device, dtype=dtype) for a in (x, y, x_test))
    model = NystromKernelRidge(alpha=0.1, n_components=30, random_state=0, **TIGHT).fit(tx, ty)
    assert isinstance(model.dual_coef_, torch.Tensor) and model.dual_coef_.dtype == torch.float64
    assert isinstance(model.centers_, torch.Tensor) and model.centers_.device == tx.device
    pred = model.predict(tt)
    assert isinstance(pred, torch.Tensor)
    assert pred.dtype == dtype and pred.device == tt.device and pred.shape == (17, 2)
    numpy = NystromKernelRidge(alpha=0.1, n_components=30, random_state=0, **TIGHT).fit(x, y)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert rel_err(pred.cpu().numpy(), numpy.predict(x_test)) < tol
    assert isinstance(model.score(tx, ty), float)


# --------------------------------------------------------------------------------------
# scikit-learn tooling: GridSearchCV, Pipeline, pickle, clone
# --------------------------------------------------------------------------------------
@needs_sklearn
def test_grid_search_pipeline_pickle_clone():
    x, y, x_test = problem(13, n=120)
    pipe = make_pipeline(StandardScaler(), NystromKernelRidge(n_components=30, random_state=0))
    search = GridSearchCV(pipe, {"nystromkernelridge__alpha": [0.01, 1.0, 100.0]}, cv=3)
    search.fit(x, y)
    assert search.best_params_["nystromkernelridge__alpha"] in (0.01, 1.0)
    model = search.best_estimator_
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(x_test), model.predict(x_test))
    fresh = clone(model[-1])
    assert not hasattr(fresh, "dual_coef_")
    assert fresh.get_params() == model[-1].get_params()


# --------------------------------------------------------------------------------------
# Errors, and nothing lost when a fit fails
# --------------------------------------------------------------------------------------
X_OK, Y_OK, _ = problem(14, n=20)
BAD_FITS = [
    ({"X": np.full((20, 3), np.nan)}, ValueError, "NaN"),
    ({"y": np.r_[Y_OK[:-1], np.inf]}, ValueError, "infinity|NaN"),
    ({"X": X_OK[:, 0]}, ValueError, "2D array"),
    ({"y": Y_OK[:-1]}, ValueError, "inconsistent numbers of samples"),
    ({"sample_weight": -np.ones(20)}, ValueError, "negative weights"),
    ({"sample_weight": 0.0}, ValueError, "sum to 0"),
    ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"gamma": 1.0, "lengthscale": 1.0}, ValueError, "give one of them, not both"),
    ({"kernel": "poly"}, ValueError, "kernel"),
    ({"solver": "cholesky"}, ValueError, "solver"),
    ({"n_components": 0}, ValueError, "n_components"),
    ({"centers": np.ones((4, 2))}, ValueError, r"centers: 2 features, but X has 3"),
    ({"centers": np.full((4, 3), np.inf)}, ValueError, "centers contains NaN or infinity"),
    ({"dtype": "int32"}, ValueError, "dtype"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD_FITS)
def test_clear_errors_and_a_failed_fit_keeps_the_fitted_state(change, error, match):
    x, y, x_test = problem(15, n=40, d=3)
    model = NystromKernelRidge(alpha=0.1, n_components=10, random_state=0).fit(x, y)
    before = {k: v for k, v in vars(model).items()}
    pred = model.predict(x_test)
    data = {"X": X_OK, "y": Y_OK, "sample_weight": None}
    params = {k: v for k, v in change.items() if k not in data}
    data |= {k: v for k, v in change.items() if k in data}
    model.set_params(**params)
    with pytest.raises(error, match=match):
        model.fit(data["X"], data["y"], sample_weight=data["sample_weight"])
    model.set_params(**{k: before[k] for k in params})
    assert vars(model).keys() == before.keys()
    for key, value in before.items():
        assert value is vars(model)[key], key
    np.testing.assert_array_equal(model.predict(x_test), pred)


def test_a_failed_fit_with_other_features_keeps_n_features_in():
    x, y, x_test = problem(16, n=40, d=3)
    model = NystromKernelRidge(n_components=10, random_state=0).fit(x, y)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.full((40, 5), np.nan), y)
    assert model.n_features_in_ == 3
    model.predict(x_test)


def test_predict_errors():
    x, y, x_test = problem(17, n=40)
    with pytest.raises(NotFittedError):
        NystromKernelRidge().predict(x_test)
    model = NystromKernelRidge(n_components=10).fit(x, y)
    with pytest.raises(ValueError, match="3 features"):
        model.predict(x_test[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full((2, 3), np.nan))


# --------------------------------------------------------------------------------------
# Streaming: the n × m matrix is never stored
# --------------------------------------------------------------------------------------
@needs_cpp
def test_fit_memory_stays_far_below_the_n_by_m_matrix():
    from fastamort.benchmarks._harness import peak_extra_memory

    rng = np.random.RandomState(0)
    n, m = 200_000, 500
    x, y = rng.rand(n, 8), rng.randn(n)
    model = NystromKernelRidge(n_components=m, max_iter=2, random_state=0)

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)

    fit()  # the first call pages in library code (LAPACK, the extension): not the fit's memory
    peak = peak_extra_memory(fit, torch.device("cpu"))
    if peak is None:
        pytest.skip("no resident-set high-water mark on this platform")
    k_bytes = n * m * 8  # 800 MB
    assert peak < k_bytes / 16, f"peak {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------
# Without scikit-learn
# --------------------------------------------------------------------------------------
NO_SKLEARN = r"""
import warnings
import numpy as np, fastamort
from fastamort.nystrom_regressor import ConvergenceWarning
rng = np.random.RandomState(0)
x, y = rng.rand(60, 3), rng.randn(60, 2)
m = fastamort.NystromKernelRidge(alpha=0.5, n_components=20, random_state=0, tol=1e-13,
                                 max_iter=500, dtype="float64")
m.fit(x, y, sample_weight=rng.rand(60) + 0.1)
print(repr(m.predict(x[:2]).tolist()))
print(repr(m.centers_.tolist()))
print(m.score(x, y))
assert m.set_params(alpha=2.0).get_params()["alpha"] == 2.0
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fastamort.NystromKernelRidge(max_iter=1, tol=0.0, n_components=20).fit(x, y)
assert any(issubclass(w.category, ConvergenceWarning) for w in caught)
expect_value_error(
    lambda: fastamort.NystromKernelRidge().predict(x),
    lambda: m.predict(x[:, :2]),
    lambda: fastamort.NystromKernelRidge(alpha=0).fit(x, y),
    lambda: fastamort.NystromKernelRidge(kernel="nope").fit(x, y),
    lambda: fastamort.NystromKernelRidge(random_state="x").fit(x, y),
)
"""


@needs_sklearn
def test_works_without_sklearn():
    lines = run_without_sklearn(NO_SKLEARN)
    rng = np.random.RandomState(0)
    x, y = rng.rand(60, 3), rng.randn(60, 2)
    sw = rng.rand(60) + 0.1
    centres = np.array(eval(lines[1]))
    ref = dense_nystrom(x, y, x[:2], centres, "rbf", 1 / np.sqrt(2 / 3), 0.5, sw)
    assert rel_err(np.array(eval(lines[0])), ref) < 1e-6
    with_sk = NystromKernelRidge(alpha=0.5, n_components=20, random_state=0, **TIGHT)
    with_sk.fit(x, y, sample_weight=sw)
    np.testing.assert_array_equal(with_sk.centers_, centres)
    assert float(lines[2]) == pytest.approx(with_sk.score(x, y), rel=1e-8)


# --------------------------------------------------------------------------------------
# The README's large-n table comes from the stored benchmark results
# --------------------------------------------------------------------------------------
def _power_of_ten(n: int) -> str:
    exponent = len(str(n)) - 1
    lead = n // 10**exponent
    sup = str(exponent).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"10{sup}" if lead == 1 else f"{lead}·10{sup}"


def nystrom_table() -> str:
    """The README's table, from bench/results/regressor_cpu.json (the rows case="nystrom")."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    rows = json.loads((root / "bench/results/regressor_cpu.json").read_text())["rows"]
    lines = [
        "| n | α | `NystromKernelRidge` | CG iterations | test RMSE | scikit-learn `Nystroem` + "
        "`Ridge` | peak memory (ours / sklearn) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r.get("case") == "nystrom"):
        rmse = f"{r['rmse']:.3f}"
        if r["exact_rmse"] is not None:
            rmse += f" (exact KRR: {r['exact_rmse']:.3f}, {r['exact_s']:.3g} s)"
        ours_mem = f"{r['peak_rss_mib'] / 1024:.2f}"
        if r["sklearn_s"] is None:
            sk = f"– (its n × m features: {r['n'] * r['m'] * 8 / 1e9:.0f} GB)"
            mem = f"{ours_mem} GiB / –"
        else:
            sk = f"{r['sklearn_s']:.3g} s, RMSE {r['sklearn_rmse']:.3f}"
            mem = f"{ours_mem} / {r['sklearn_peak_rss_mib'] / 1024:.2f} GiB"
        lines.append(
            f"| {_power_of_ten(r['n'])} | {r['alpha']:g} | {r['fastamort_s']:.3g} s | "
            f"{r['iters']} | {rmse} | {sk} | {mem} |"
        )
    return "\n".join(lines)


def test_readme_large_n_table_matches_the_stored_results():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- nystrom-table -->\n", 1)[1].split("\n\n", 1)[0]
    expected = nystrom_table()
    assert table == expected, f"regenerate the README table; from bench/results:\n{expected}"
