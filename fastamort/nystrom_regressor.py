"""``fastamort.NystromKernelRidge``: Nyström kernel ridge regression for 10⁵–10⁷ points.

Solves min_w ‖y − K_nm w‖² + α wᵀK_mm w (K_nm = k(X, C), K_mm = k(C, C), C the m centres) by
conjugate gradients preconditioned as in Falkon (Rudi, Carratino & Rosasco, NeurIPS 2017;
Meanti et al., NeurIPS 2020), with every product Kᵀ_nm W K_nm v streamed by the fused
:func:`fastamort.ops.normal_matmul.normal_matmul` (the n × m matrix is never stored), or, for
small m, by one Cholesky of the m × m normal equations (``solver="direct"``). Shares
:class:`fastamort.KernelRidge`'s input handling (NumPy in/out, torch in/out on the tensor's
device, scikit-learn's validation when installed).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch

from ._pairwise import NATIVE, lengthscale_for, resolve_gamma
from ._sklearn_compat import (
    ConvergenceWarning,
    Interval,
    StrOptions,
    check_is_fitted,
    check_random_state,
)
from .ops.gram import gram
from .ops.gram_matmul import gram_matmul
from .ops.normal_matmul import BLOCK_ENTRIES, normal_matmul
from .regressor import (
    _BACKENDS,
    HAVE_SKLEARN,
    BaseEstimator,
    KernelRidge,
    MultiOutputMixin,
    RegressorMixin,
    _as_tensor,
    _check_x,
    _torch_dtype,
)
from .solvers.cg import block_pcg
from .solvers.nystrom import EIG_RTOL

__all__ = ["ConvergenceWarning", "NystromKernelRidge"]

#: Kernel names → the engine's kernel (``"gaussian"`` is ``"rbf"``'s alias here).
KERNELS = {**NATIVE, "gaussian": "gaussian"}
SOLVERS = ("pcg", "direct")
#: Default CG stopping rule: relative residual of the preconditioned normal equations.
DEFAULT_TOL = 1e-4
#: Default cap on CG iterations.
DEFAULT_MAX_ITER = 100
#: Jitter ε added to K_mm's diagonal, per centre (Falkon's 1e-13·m in float64), multiplied by 10
#: until its Cholesky factor exists; ``solver="pcg"`` solves with α·(K_mm + εI) as the ridge.
JITTER_PER_CENTRE = 1e-13


#: The preconditioner samples s = min(n, PRECOND_ROWS_MAX·m, max(m, PRECOND_ROWS_PER_N·n/m))
#: rows: its cost (3·s·m² flops) stays near a few CG iterations' (n·m kernel values each).
PRECOND_ROWS_MAX = 10
PRECOND_ROWS_PER_N = 100


def preconditioner_rows(n: int, m: int) -> int:
    """How many rows the preconditioner of :class:`NystromKernelRidge` samples (see above)."""
    return int(min(n, PRECOND_ROWS_MAX * m, max(m, math.ceil(PRECOND_ROWS_PER_N * n / m))))


def _positive_cholesky(a: torch.Tensor, start: float) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor L (LLᵀ = a + jitter·I) and the jitter, which starts at ``start``
    and grows by 10× until the factorisation succeeds."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for attempt in range(16):
        jitter = start * 10.0**attempt
        lower, info = torch.linalg.cholesky_ex(a + jitter * eye)
        if int(info) == 0:
            return lower, jitter
    raise ValueError(
        f"the {a.shape[0]}×{a.shape[0]} centre kernel matrix is not positive definite even "
        f"with jitter {jitter:.3g} (are the centres or the lengthscale extreme?)"
    )


class NystromKernelRidge(MultiOutputMixin, RegressorMixin, BaseEstimator):
    r"""Nyström kernel ridge regression, scikit-learn compatible, for up to millions of points.

    Fits ``w`` in

    .. math:: \min_w \|y - K_{nm} w\|^2_W + \alpha\, w^\top K_{mm} w,

    with ``K_nm = k(X, C)``, ``K_mm = k(C, C)`` for m centres C drawn uniformly from the rows of
    X (W: the sample weights), and predicts ``k(X_new, C) @ w``. With m = n (all rows as
    centres) this is :class:`fastamort.KernelRidge`'s objective ‖y − Kc‖² + α cᵀKc; with
    m < n it is what scikit-learn's ``make_pipeline(Nystroem(n_components=m, gamma=γ),
    Ridge(alpha=α, fit_intercept=False))`` solves, so the same α means the same model (and the
    same ``random_state`` draws the same centres as ``Nystroem``).

    Parameters
    ----------
    alpha : float, default=1.0
        Ridge, > 0.
    kernel : {"rbf", "gaussian", "laplacian", "matern12", "matern32", "matern52"}, default="rbf"
        As for :class:`fastamort.KernelRidge` (``"gaussian"`` is ``"rbf"``).
    gamma : float, default=None
        rbf: exp(−γ‖x − y‖²); laplacian: exp(−γ‖x − y‖₁); Matérn: lengthscale 1/√(2γ).
        ``None``: ``1/n_features``, unless ``lengthscale`` is given.
    lengthscale : float, default=None
        The kernel's lengthscale ℓ instead of γ (rbf: exp(−‖x − y‖²/(2ℓ²)); laplacian:
        exp(−‖x − y‖₁/ℓ)). Give ``gamma`` or ``lengthscale``, not both.
    n_components : int, default=1000
        Number of centres m. More than the number of samples is clipped to it, with a warning
        (as scikit-learn's ``Nystroem``).
    centers : "uniform" or array-like of shape (m, n_features), default="uniform"
        ``"uniform"``: m rows of X drawn without replacement (``random_state``); an array: these
        centres (then ``n_components`` is not used).
    solver : {"pcg", "direct"}, default="pcg"
        ``"pcg"``: preconditioned conjugate gradients, O(n·m·D) time per iteration and
        O(n·D + m²) memory. ``"direct"``: forms Kᵀ_nm W K_nm (m × m) in row blocks, O(n·m²)
        time, then one eigendecomposition and one Cholesky of m × m matrices; best for small m.
    max_iter : int, default=None
        CG iterations at most (``None``: 100). Stopping there raises a ``ConvergenceWarning``.
    tol : float, default=None
        CG stops when every target's relative residual of the preconditioned normal equations
        is ≤ tol (``None``: 1e-4).
    random_state : int, RandomState instance or None, default=None
        Draws the centres (as ``Nystroem``'s ``random_state``).
    backend : {"auto", "triton", "cpp", "torch"}, default="auto"
        Backend of the fastamort ops.
    dtype : torch or NumPy float dtype, or its name, default=None
        Precision of the distances and kernel values of the n × m products (computed on data
        centred in float64); every product and sum, K_mm, the preconditioner and the
        coefficients are float64 whatever it is. ``None`` means float32, which is about twice
        as fast on the CPU and, measured on make_friedman1 (n = 2·10⁴, m = 2000, γ = 1), moves
        the predictions by 6·10⁻⁷ (α = 1), 4·10⁻⁶ (α = 0.1), 6·10⁻⁵ (α = 0.01) and 2·10⁻⁴
        (α = 0.001) relative to float64 kernel values, at the level of the default ``tol``, with
        the same test RMSE to four digits. float64 reproduces dense float64 solves to
        round-off (with a tight ``tol``).

    Attributes
    ----------
    centers_ : ndarray or Tensor of shape (m, n_features)
        The centres (a tensor on the input's device for torch input).
    dual_coef_ : ndarray or Tensor of shape (m,) or (m, n_targets)
        The coefficients w (float64).
    n_components_ : int
        m, the number of centres used.
    lengthscale_ : float
        The kernel's lengthscale (from ``gamma`` or ``lengthscale``).
    n_iter_ : int
        CG iterations run (1 for ``solver="direct"``: one factorisation).
    residual_ : float
        Final relative residual (largest over the targets): of the preconditioned normal
        equations for ``"pcg"``, of the m × m normal equations for ``"direct"``.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only for input with string column names (a pandas DataFrame).

    Notes
    -----
    Which estimator to pick: :class:`fastamort.KernelRidge` (exact, O(n³) time, O(n²) memory:
    3.2 GB in float64 at n = 2·10⁴) up to n ≈ 2·10⁴, or for kernels other than the ones here;
    beyond, this one with ``solver="pcg"``: O(n·D + m²) memory, O(n·m·D) time per CG
    iteration, about 10–20 iterations; ``solver="direct"`` when n·m² costs less than the
    iterations (m of a few hundred). On make_friedman1 (8 features, rbf γ = 1, α = 1 or 0.1),
    m = 2000 centres match exact KRR's test RMSE within 0.1 % at n = 2·10⁴.

    Solver: preconditioned CG on Bᵀ H B β = Bᵀ Kᵀ_nm W y, w = Bβ, with
    H = Kᵀ_nm W K_nm + α·(K_mm + εI) (ε: the jitter that K_mm's Cholesky factor needs, from
    1e-13·m) and BBᵀ ≈ H⁻¹ built from two m × m Cholesky factors as in Falkon: K_mm + εI = LLᵀ,
    Q = (n/s)·Φᵀ W_s Φ + α·I = MMᵀ with Φ = K_sm L⁻ᵀ the Nyström features of s ≥ m sampled
    rows, Bᵀ = (LM)⁻¹. With the m centres as the s rows this is Falkon's preconditioner
    ((n/m)·K_mm² + α·K_mm); more rows approximate H better (10⁶ points: 9–11 iterations
    instead of 38–70). Sample weights must be ≥ 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastamort import NystromKernelRidge
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(500, 3), rng.randn(500)
    >>> model = NystromKernelRidge(alpha=0.1, n_components=100, random_state=0).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    """

    if HAVE_SKLEARN:
        _parameter_constraints: dict = {
            "alpha": [Interval(numbers.Real, 0, None, closed="neither")],
            "kernel": [StrOptions(set(KERNELS))],
            "gamma": [Interval(numbers.Real, 0, None, closed="neither"), None],
            "lengthscale": [Interval(numbers.Real, 0, None, closed="neither"), None],
            "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
            "centers": [StrOptions({"uniform"}), "array-like"],
            "solver": [StrOptions(set(SOLVERS))],
            "max_iter": [Interval(numbers.Integral, 1, None, closed="left"), None],
            "tol": [Interval(numbers.Real, 0, None, closed="left"), None],
            "random_state": ["random_state"],
            "backend": [StrOptions(set(_BACKENDS))],
            "dtype": [torch.dtype, np.dtype, type, str, None],
        }

    def __init__(
        self,
        alpha=1.0,
        *,
        kernel="rbf",
        gamma=None,
        lengthscale=None,
        n_components=1000,
        centers="uniform",
        solver="pcg",
        max_iter=None,
        tol=None,
        random_state=None,
        backend="auto",
        dtype=None,
    ):
        self.alpha = alpha
        self.kernel = kernel
        self.gamma = gamma
        self.lengthscale = lengthscale
        self.n_components = n_components
        self.centers = centers
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.backend = backend
        self.dtype = dtype

    # ---- input handling shared with KernelRidge (reads only n_features_in_) ----------
    _validate_numpy = KernelRidge._validate_numpy
    _validate_tensor = KernelRidge._validate_tensor
    _fit_inputs = KernelRidge._fit_inputs
    _predict_input = KernelRidge._predict_input
    _r2_score = KernelRidge._r2_score
    _sample_weight = KernelRidge._sample_weight
    _fitted = KernelRidge._fitted

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ---- validation ----------------------------------------------------------------
    def _check_params(self) -> None:
        if HAVE_SKLEARN:
            self._validate_params()
        else:
            self._check_params_without_sklearn()
        if self.gamma is not None and self.lengthscale is not None:
            raise ValueError(
                f"gamma, lengthscale: give one of them, not both (got gamma={self.gamma!r}, "
                f"lengthscale={self.lengthscale!r})"
            )
        if self.dtype is not None:
            _torch_dtype(self.dtype)

    def _check_params_without_sklearn(self) -> None:
        def positive(name: str, value: Any, *, none_ok: bool, integer: bool = False) -> None:
            if value is None and none_ok:
                return
            kind = numbers.Integral if integer else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
                what = "a positive integer" if integer else "a positive number"
                raise ValueError(f"{name}: expected {what}, got {value!r}")

        positive("alpha", self.alpha, none_ok=False)
        positive("gamma", self.gamma, none_ok=True)
        positive("lengthscale", self.lengthscale, none_ok=True)
        positive("n_components", self.n_components, none_ok=False, integer=True)
        positive("max_iter", self.max_iter, none_ok=True, integer=True)
        if self.tol is not None and not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol: expected a number >= 0 or None, got {self.tol!r}")
        for name, value, choices in (
            ("kernel", self.kernel, tuple(KERNELS)),
            ("solver", self.solver, SOLVERS),
            ("backend", self.backend, _BACKENDS),
        ):
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
        if isinstance(self.centers, str) and self.centers != "uniform":
            raise ValueError(f"centers: expected 'uniform' or an array, got {self.centers!r}")

    def _lengthscale(self, n_features: int) -> float:
        if self.lengthscale is not None:
            return float(self.lengthscale)
        gamma = resolve_gamma(self.kernel, self.gamma, n_features)
        return lengthscale_for(KERNELS[self.kernel], gamma)

    def _choose_centers(self, x: torch.Tensor, order: np.ndarray) -> torch.Tensor:
        """The given centres, or the rows ``order[:m]`` (``order``: a permutation of the rows)."""
        n = x.shape[0]
        if not isinstance(self.centers, str):
            c = _as_tensor(self.centers, "centers")
            _check_x(c, "centers")
            if c.shape[1] != x.shape[1]:
                raise ValueError(
                    f"centers: {c.shape[1]} features, but X has {x.shape[1]} (shape "
                    f"{tuple(c.shape)}, expected (m, {x.shape[1]}))"
                )
            return c.to(device=x.device, dtype=x.dtype)
        m = self.n_components
        if m > n:
            warnings.warn(
                f"n_components={m} > n_samples={n}: n_components was set to n_samples (every "
                "row is a centre), which is exact kernel ridge at Nyström's cost.",
                UserWarning,
                stacklevel=4,
            )
            m = n
        return x[torch.from_numpy(order[:m]).to(x.device)]

    # ---- fit -----------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit the model; on any error the estimator is left exactly as it was.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)
            Training data.
        y : array-like or Tensor of shape (n_samples,) or (n_samples, n_targets)
            Targets.
        sample_weight : float or array-like of shape (n_samples,), default=None
            Per-sample weights (≥ 0).

        Returns
        -------
        self : NystromKernelRidge
        """
        before = dict(self.__dict__)
        try:
            return self._fit(X, y, sample_weight)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X, y, sample_weight):
        self._check_params()
        torch_in = isinstance(X, torch.Tensor)
        x, yt, X_np = self._fit_inputs(X, y)
        device = X.device if torch_in else torch.device("cpu")
        if x.dtype not in (torch.float32, torch.float64):  # integers, float16, bfloat16
            x = x.to(torch.float64)
        x = x.to(device=device)
        kernel_dtype = torch.float32 if self.dtype is None else _torch_dtype(self.dtype)
        n = x.shape[0]
        y2 = yt.to(device=device, dtype=torch.float64).reshape(n, -1)
        sw = self._sample_weight(sample_weight, n, X_np)
        if sw is not None:
            sw = sw.to(device=device, dtype=torch.float64)
            if not float(sw.sum()) > 0:
                raise ValueError("sample_weight: the weights sum to 0; at least one must be > 0")
        ell = self._lengthscale(x.shape[1])
        kernel = KERNELS[self.kernel]
        with torch.no_grad():
            # as scikit-learn's Nystroem: the centres are the first m rows of a permutation
            # drawn from random_state (the preconditioner takes its rows from it too)
            order = check_random_state(self.random_state).permutation(n)
            centers = self._choose_centers(x, order)
            # the kernels are translation invariant: centre in float64 before rounding to the
            # kernel dtype, so that an offset of the data does not eat float32's digits
            shift = centers.to(torch.float64).mean(0)
            xk = (x.to(torch.float64) - shift).to(kernel_dtype)
            ck = (centers.to(torch.float64) - shift).to(kernel_dtype)
            solve = self._solve_direct if self.solver == "direct" else self._solve_pcg
            coef, n_iter, residual = solve(xk, ck, y2, sw, kernel, ell, order)
        if not bool(torch.isfinite(coef).all()):
            raise ValueError(
                "NystromKernelRidge: the coefficients are not finite (alpha too small for the "
                "conditioning of the problem?); increase alpha or change the lengthscale"
            )
        coef = coef.reshape(centers.shape[0], *yt.shape[1:])
        if torch_in:
            self.dual_coef_, self.centers_ = coef, centers
        else:
            self.dual_coef_, self.centers_ = coef.cpu().numpy(), centers.cpu().numpy()
        self.n_components_ = int(centers.shape[0])
        self.lengthscale_ = ell
        self.n_iter_ = n_iter
        self.residual_ = residual
        return self

    def _normal(self, x, centers, kernel, ell, **operands) -> torch.Tensor:
        return normal_matmul(
            x, centers, kernel=kernel, lengthscale=ell, backend=self.backend, **operands
        )

    def _centre_gram(self, centers: torch.Tensor, kernel: str, ell: float) -> torch.Tensor:
        """K_mm in float64 (exactly symmetric)."""
        return gram(centers.to(torch.float64), kernel=kernel, lengthscale=ell, backend=self.backend)

    def _kernel_blocks(self, x, centers, kernel, ell, rows=None, entries=BLOCK_ENTRIES):
        """(start, K(x[rows][start:start+b], centers) in float64) in blocks of about
        ``entries`` entries (rows: all of x)."""
        n = x.shape[0] if rows is None else rows.shape[0]
        step = max(1, entries // max(centers.shape[0], 1))
        for i in range(0, n, step):
            xb = x[i : i + step] if rows is None else x[rows[i : i + step]]
            kb = gram(xb, centers, kernel=kernel, lengthscale=ell, backend=self.backend)
            yield i, kb.to(torch.float64)

    def _solve_pcg(self, x, centers, y2, sw, kernel, ell, order):
        n, m = x.shape[0], centers.shape[0]
        alpha = float(self.alpha)
        kmm = self._centre_gram(centers, kernel, ell)
        # The preconditioner P = L Q Lᵀ ≈ H = Kᵀ_nm W K_nm + α·K̃ with K̃ = K_mm + εI = LLᵀ and
        # Q = (n/s)·ΦᵀW_sΦ + α·I, Φ = K_sm L⁻ᵀ the Nyström features of s sampled rows. With the
        # m centres as the rows this is Falkon's (n/m)·K_mm² + α·K_mm; more rows (see
        # preconditioner_rows) approximate H better, and save more CG iterations than they
        # cost (see PRECOND_ROWS_PER_N). Φ is formed by triangular solves (rows of norm ≤ 1),
        # never as L⁻¹GL⁻ᵀ from G = Kᵀ_sm K_sm, whose round-off L⁻¹ would amplify by 1/ε.
        # Bᵀ = M⁻¹L⁻¹ = (LM)⁻¹ (Q = MMᵀ) is formed once: every CG iteration then needs two m × m
        # GEMVs (triangular solves with one right-hand side are 100× slower than that in
        # torch 2.13's CPU build). The ridge is α·K̃, the matrix the preconditioner inverts:
        # with K_mm alone, its null directions (duplicate centres, flat kernels) would get no
        # ridge, and CG run to a tight tol would fill them with amplified round-off.
        lower, eps = _positive_cholesky(kmm, JITTER_PER_CENTRE * m)
        kmm.diagonal().add_(eps)
        s = preconditioner_rows(n, m)
        rows = torch.from_numpy(order[:s]).to(x.device)
        q = torch.zeros(m, m, dtype=torch.float64, device=x.device)
        for i, kb in self._kernel_blocks(x, centers, kernel, ell, rows, entries=1 << 20):
            phi_t = torch.linalg.solve_triangular(lower, kb.mT, upper=False)  # (m, b)
            if sw is not None:
                q += (phi_t * sw[rows[i : i + kb.shape[0]]]) @ phi_t.mT
            else:
                q += phi_t @ phi_t.mT
        q *= n / s
        q.diagonal().add_(alpha)
        inner, _ = _positive_cholesky(q, JITTER_PER_CENTRE * m * alpha)
        eye = torch.eye(m, dtype=torch.float64, device=x.device)
        bt = torch.linalg.solve_triangular(lower @ inner, eye, upper=False)

        def matvec(beta: torch.Tensor) -> torch.Tensor:  # Bᵀ(Kᵀ_nm W K_nm + α·K̃)B β
            w = bt.mT @ beta
            hw = self._normal(x, centers, kernel, ell, v=w, weights=sw) + alpha * (kmm @ w)
            return bt @ hw

        rhs = bt @ self._normal(x, centers, kernel, ell, y=y2, weights=sw)
        tol = DEFAULT_TOL if self.tol is None else float(self.tol)
        max_iter = DEFAULT_MAX_ITER if self.max_iter is None else int(self.max_iter)
        res = block_pcg(matvec, rhs, tol=tol, max_iter=max_iter)
        if not res.converged:
            warnings.warn(
                f"NystromKernelRidge: CG stopped after max_iter={res.iterations} iterations with "
                f"relative residual {res.residual:.3g} > tol={tol:.3g}; the coefficients are "
                "not converged. Increase max_iter or tol (or alpha).",
                ConvergenceWarning,
                stacklevel=4,
            )
        return bt.mT @ res.x, res.iterations, res.residual

    def _solve_direct(self, x, centers, y2, sw, kernel, ell, order):
        m = centers.shape[0]
        alpha = float(self.alpha)
        normal = torch.zeros(m, m, dtype=torch.float64, device=x.device)
        for i, kb in self._kernel_blocks(x, centers, kernel, ell):  # Kᵀ W K, block by block
            normal += kb.mT @ (kb if sw is None else kb * sw[i : i + kb.shape[0], None])
        rhs = self._normal(x, centers, kernel, ell, y=y2, weights=sw)
        kmm = self._centre_gram(centers, kernel, ell)
        # w = P θ with P = U S^{-1/2} on the eigen-directions of K_mm above EIG_RTOL·max, where
        # (Pᵀ Kᵀ W K P + α I) θ = Pᵀ Kᵀ W y is positive definite (eigenvalues ≥ α)
        s, u = torch.linalg.eigh(kmm)
        keep = s > EIG_RTOL * float(s.max().clamp_min(torch.finfo(torch.float64).tiny))
        p = u[:, keep] * s[keep].rsqrt()
        reduced = p.mT @ normal @ p
        reduced = 0.5 * (reduced + reduced.mT)
        reduced.diagonal().add_(alpha)
        theta = torch.cholesky_solve(p.mT @ rhs, torch.linalg.cholesky(reduced))
        coef = p @ theta
        resid = (normal + alpha * kmm) @ coef - rhs
        bnorm = rhs.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
        return coef, 1, float((resid.norm(dim=0) / bnorm).max())

    # ---- predict / score -----------------------------------------------------------
    def predict(self, X):
        """Predict with the fitted model.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)

        Returns
        -------
        ndarray or Tensor of shape (n_samples,) or (n_samples, n_targets)
            NumPy (float64) for NumPy input; for a tensor, a tensor on its device and in its
            dtype.
        """
        check_is_fitted(self)
        torch_in = isinstance(X, torch.Tensor)
        x = self._predict_input(X)
        device = X.device if torch_in else torch.device("cpu")
        coef = self._fitted("dual_coef_", torch.float64, device)
        centers = self._fitted("centers_", torch.float64, device)
        coef2 = coef.reshape(coef.shape[0], -1)
        with torch.no_grad():
            out = gram_matmul(
                x.to(device=device, dtype=torch.float64),
                centers,
                coef2,
                kernel=KERNELS[self.kernel],
                lengthscale=self.lengthscale_,
                backend=self.backend,
            )
        out = out.reshape(x.shape[0], *coef.shape[1:])
        if not torch_in:
            return out.cpu().numpy()
        return out.to(dtype=X.dtype if X.is_floating_point() else torch.float64)

    def score(self, X, y, sample_weight=None) -> float:
        """R² of the predictions (scikit-learn's ``r2_score``), on NumPy or torch input.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)
        y : array-like or Tensor of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like or Tensor of shape (n_samples,), default=None

        Returns
        -------
        float
        """
        return self._r2_score(X, y, sample_weight)
