"""``fastamort.KernelRidge``: scikit-learn's kernel ridge regressor on fastamort's engines.

A drop-in replacement for :class:`sklearn.kernel_ridge.KernelRidge` (same constructor,
attributes, results and errors) that builds the Gram matrix with :func:`fastamort.gram`,
solves with :func:`fastamort.ridge_solve` (one Cholesky) and predicts with the fused
:func:`fastamort.gram_matmul`, on the CPU (C++ extension) or a GPU (Triton), and accepts
torch tensors. scikit-learn is optional: with it installed the class is a real sklearn
estimator (``BaseEstimator`` and mixins, sklearn's input validation and parameter checks);
without it a minimal stand-in keeps ``get_params``/``set_params``/``score`` working.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import torch

from ._backends import BACKENDS
from ._checks import first_nonfinite
from ._dual_solve import solve_dual
from ._pairwise import (
    KERNEL_CHOICES,
    NATIVE,
    check_gram_finite,
    kernel_times,
    pairwise_callable,
    pairwise_torch,
)
from ._sklearn_compat import (
    HAVE_SKLEARN,
    BaseEstimator,
    Interval,
    InvalidParameterError,
    MultiOutputMixin,
    NotFittedError,
    RegressorMixin,
    StrOptions,
    UndefinedMetricWarning,
    check_is_fitted,
)
from ._sklearn_compat import check_sample_weight as _check_sample_weight
from ._sklearn_compat import validate_data as _sk_validate_data

__all__ = ["KernelRidge", "NotFittedError"]

_BACKENDS = ("auto", *BACKENDS)


# --------------------------------------------------------------------------------------
# Input validation without scikit-learn (torch tensors, or NumPy when sklearn is absent)
# --------------------------------------------------------------------------------------
def _as_tensor(a: Any, name: str) -> torch.Tensor:
    """A tensor view of array-like input, refusing what sklearn's ``check_array`` refuses."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype.kind in "OUS":
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: could not convert to a numeric array: {exc}") from exc
        if arr.dtype.kind == "c":
            raise ValueError("Complex data not supported")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.float64)
        t = _from_numpy(arr)
    if t.is_complex():
        raise ValueError("Complex data not supported")
    return t


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """torch view of a NumPy array (a copy when it is read-only or not native-endian)."""
    if not arr.flags.writeable or not arr.dtype.isnative:
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)


def _check_x(x: torch.Tensor, name: str = "X") -> None:
    if x.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name}, got shape {tuple(x.shape)}. Reshape your data "
            "with .reshape(-1, 1) for a single feature or .reshape(1, -1) for a single sample."
        )
    if x.shape[0] < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={tuple(x.shape)}) while a minimum of 1 is "
            "required."
        )
    if x.shape[1] < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={tuple(x.shape)}) while a minimum of 1 is "
            "required."
        )
    _check_finite(x, name)


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and first_nonfinite([(t, name)]) is not None:
        raise ValueError(f"Input {name} contains NaN or infinity.")


def _torch_dtype(dtype: Any) -> torch.dtype:
    """float32/float64 from a torch dtype, NumPy dtype or name; ValueError otherwise."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            out = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
                np.dtype(dtype)
            ]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"dtype: expected float32 or float64 (torch or NumPy), got {dtype!r}"
            ) from exc
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {out}")
    return out


def _alpha_array(alpha: Any) -> np.ndarray:
    """``alpha`` as a 1-D float64 array, as scikit-learn's ``np.atleast_1d(alpha)`` reads it.

    Any shape of size 1 is one α; a 1-D array is one α per target. NaN/inf raise ValueError
    (scikit-learn's solve raises one too); non-numeric values TypeError (as scikit-learn's
    arithmetic does); an empty array IndexError (scikit-learn's ``alpha[0]``).
    """
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cpu().numpy()
    arr = np.asarray(alpha)
    if arr.dtype.kind in "USVc":
        raise TypeError(f"alpha: expected real numbers, got an array of dtype {arr.dtype}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"alpha: expected real numbers: {exc}") from exc
    if arr.size == 0:
        raise IndexError("alpha: got an empty array; expected a float or one value per target")
    if arr.size > 1 and arr.ndim > 1:
        raise ValueError(
            f"alpha: expected a float or a 1-D array with one value per target, got shape "
            f"{arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"alpha: contains NaN or infinity: {arr.reshape(-1).tolist()}")
    return arr.reshape(-1)


def _r2(y: Any, pred: torch.Tensor, sample_weight: Any) -> float:
    """R², uniform average over targets, as ``sklearn.metrics.r2_score`` (force_finite).

    Validates y and sample_weight as ``r2_score`` does: y 1-D or 2-D, finite, one row per
    prediction and as many columns; sample_weight an array of shape (n_samples,), finite and
    not all zero (negative weights are accepted, as by scikit-learn).
    """
    yt = _as_tensor(y, "y").to(pred.device)
    n = pred.shape[0]
    if yt.ndim not in (1, 2):
        raise ValueError(
            f"y: expected a 1D or 2D array, got shape {tuple(yt.shape)} (Found array with "
            f"dim {yt.ndim}, while dim <= 2 is required.)"
        )
    sw = None
    if sample_weight is not None:
        if isinstance(sample_weight, numbers.Number) or (
            isinstance(sample_weight, (np.ndarray, torch.Tensor)) and sample_weight.ndim == 0
        ):
            raise InvalidParameterError(
                "The 'sample_weight' parameter of r2_score must be an array-like or None. "
                f"Got {sample_weight!r} instead."
            )
        sw = _as_tensor(sample_weight, "sample_weight").to(pred.device)
    lengths = [("y", yt.shape[0]), ("X", n)]
    if sw is not None and sw.ndim >= 1:
        lengths.append(("sample_weight", sw.shape[0]))
    if len({length for _, length in lengths}) > 1:
        described = ", ".join(f"{name} has {length}" for name, length in lengths)
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: {described}."
        )
    _check_finite(yt, "y")
    y2 = yt.to(pred.dtype).reshape(n, -1)
    pred2 = pred.reshape(n, -1)
    if y2.shape[1] != pred2.shape[1]:
        raise ValueError(
            f"y has {y2.shape[1]} output(s) (columns) but the model predicts {pred2.shape[1]} "
            f"(y_true and y_pred have different number of output ({y2.shape[1]}!="
            f"{pred2.shape[1]}))"
        )
    if sw is not None:
        if sw.ndim != 1:
            raise ValueError(
                f"sample_weight: expected a 1D array of length {n}, got shape {tuple(sw.shape)}"
            )
        _check_finite(sw, "sample_weight")
        if not bool((sw != 0).any()):
            raise ValueError(
                "sample_weight: Sample weights must contain at least one non-zero number."
            )
    if n < 2:
        warnings.warn(
            "R^2 score is not well-defined with less than two samples.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return float("nan")
    if sw is None:
        w = torch.ones(n, 1, dtype=y2.dtype, device=y2.device)
    else:
        w = sw.to(y2.dtype).reshape(-1, 1)
    num = (w * (y2 - pred2).square()).sum(0)
    mean = (w * y2).sum(0) / w.sum()
    den = (w * (y2 - mean).square()).sum(0)
    ones = torch.ones_like(num)
    r2 = torch.where(
        den != 0, 1 - num / torch.where(den != 0, den, ones), torch.where(num == 0, ones, 0 * ones)
    )
    return float(r2.mean())


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------
class KernelRidge(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Kernel ridge regression, scikit-learn compatible, on fastamort's fast engines.

    Fits the dual coefficients ``c`` of ``(K + alpha·I) c = y`` with ``K = k(X, X)`` (no
    intercept, y not centred, no scaling by n: exactly scikit-learn's
    :class:`~sklearn.kernel_ridge.KernelRidge`) and predicts ``k(X_new, X_fit_) @ c``.

    Parameters
    ----------
    alpha : float or array-like of shape (n_targets,), default=1.0
        Ridge added to the kernel diagonal; one per target if a 1-D array is given. An array
        of size 1 (any shape) is one value, as in scikit-learn. A negative or non-finite
        float is refused by the parameter check (``InvalidParameterError``, a ValueError);
        a NaN or infinite entry of an array raises ValueError (as scikit-learn's solve
        does); a negative entry of an array is accepted, as by scikit-learn, and added to
        the diagonal as given (see Notes).
    kernel : str or callable, default="linear"
        scikit-learn's names: ``"linear"``, ``"rbf"``, ``"laplacian"``, ``"poly"`` /
        ``"polynomial"``, ``"sigmoid"``, ``"cosine"``, ``"additive_chi2"``, ``"chi2"``,
        ``"precomputed"`` (X is the kernel matrix), or a callable on pairs of rows (its
        extra arguments from ``kernel_params``); plus ``"matern12"``, ``"matern32"``,
        ``"matern52"``. ``rbf``, ``laplacian`` and the Matérn kernels run on the fused
        engine (no n_test × n_train matrix is stored when predicting).
    gamma : float, default=None
        ``rbf``: exp(−γ‖x − y‖²); ``laplacian``: exp(−γ‖x − y‖₁); Matérn: lengthscale
        ℓ = 1/√(2γ) (the lengthscale ``rbf`` has for the same γ); ``poly``, ``sigmoid``: the
        inner-product scale; ``chi2``: exp(γ·additive_chi2). ``None`` means
        ``1/n_features`` (``chi2``: 1).
    degree : float, default=3
        Degree of the polynomial kernel.
    coef0 : float, default=1
        Offset of the polynomial and sigmoid kernels.
    kernel_params : dict, default=None
        Extra keyword arguments of a callable kernel.
    backend : {"auto", "triton", "cpp", "torch"}, default="auto"
        Backend of the fastamort ops (see :mod:`fastamort._backends`).
    device : str or torch.device, default=None
        Where to compute. ``None``: the device of torch input, the CPU for NumPy input.
    dtype : torch or NumPy float dtype, or its name, default=None
        Compute dtype. ``None``: float64 for NumPy input (as scikit-learn), the input's
        dtype for float32/float64 tensors.

    Attributes
    ----------
    dual_coef_ : ndarray or Tensor of shape (n_samples,) or (n_samples, n_targets)
        Dual coefficients ``c`` (a tensor on the compute device when fitted on tensors).
    X_fit_ : ndarray or Tensor of shape (n_samples, n_features)
        Training data in the compute dtype (the kernel matrix for ``"precomputed"``).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of X, when it had string column names (pandas).

    Notes
    -----
    * NumPy in → NumPy out, in the compute dtype (float64 unless ``dtype`` says otherwise);
      torch in → torch out, on the input's device and in its dtype. Inputs are detached:
      for gradients use :func:`fastamort.gram` and :func:`fastamort.ridge_solve` directly.
    * Sample weights enter as K ← diag(√w) K diag(√w), y ← √w·y, c ← √w·c (scikit-learn).
    * Large float64 fits on the CPU (n ≥ 1536, and n ≥ 50 × the number of targets) factor
      K + αI in float32 and refine the solution in float64 until its residual is at the
      level of a float64 Cholesky solve (LAPACK ``dsposv``'s scheme, about twice as fast;
      with more targets the refinement costs more than it saves); when that does not converge
      (κ(K + αI) too large for float32) they factor in float64 instead.
    * When the Cholesky factorisation fails in float64 the fit warns ("Singular matrix in
      solving dual problem. Using least-squares solution instead.") and uses the
      minimum-norm least-squares solution, as scikit-learn does (also for per-target
      alphas, where scikit-learn raises). In float32 fastamort's jitter policy applies
      (a ``NumericalWarning`` per retry), then :class:`fastamort.NotPSDError` says to
      increase ``alpha`` or use float64.
    * Negative entries of an alpha array (scikit-learn's parameter check only refuses a
      negative float) are added to the diagonal as given: K + αI is factored when it is
      still positive definite, else the least-squares fallback runs with its warning, with
      scikit-learn's results.
    * ``"precomputed"``: the factorisation reads the upper triangle of the (weighted) kernel
      matrix, as scipy's ``solve(assume_a="pos")`` in scikit-learn does, so a non-symmetric
      matrix gives scikit-learn's dual coefficients; the least-squares fallback reads the
      whole matrix, as scikit-learn's.
    * A kernel matrix with NaN or infinite entries (``"poly"`` with a non-integer ``degree``
      and a negative base γ⟨x, y⟩ + coef0, or an overflow) raises ValueError naming the
      kernel and ``degree``, where scikit-learn's solve raises a ValueError too.
    * Sparse X is accepted (as scikit-learn) and densified; ``X_fit_`` is then dense.
    * Callable kernels are evaluated on the CPU, row pair by row pair (through scikit-learn's
      ``pairwise_kernels`` when installed), on NumPy rows in the compute dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from fastamort import KernelRidge
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.randn(50, 3), rng.randn(50)
    >>> model = KernelRidge(alpha=0.1, kernel="rbf", gamma=0.5).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    """

    if HAVE_SKLEARN:
        _parameter_constraints: dict = {
            "alpha": [Interval(numbers.Real, 0, None, closed="left"), "array-like"],
            "kernel": [StrOptions(set(KERNEL_CHOICES)), callable],
            "gamma": [Interval(numbers.Real, 0, None, closed="left"), None],
            "degree": [Interval(numbers.Real, 0, None, closed="left")],
            "coef0": [Interval(numbers.Real, None, None, closed="neither")],
            "kernel_params": [dict, None],
            "backend": [StrOptions(set(_BACKENDS))],
            "device": [str, torch.device, None],
            "dtype": [torch.dtype, np.dtype, type, str, None],
        }

    def __init__(
        self,
        alpha=1.0,
        *,
        kernel="linear",
        gamma=None,
        degree=3,
        coef0=1,
        kernel_params=None,
        backend="auto",
        device=None,
        dtype=None,
    ):
        self.alpha = alpha
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.kernel_params = kernel_params
        self.backend = backend
        self.device = device
        self.dtype = dtype

    # ---- scikit-learn tags ---------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.pairwise = isinstance(self.kernel, str) and self.kernel == "precomputed"
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"pairwise": isinstance(self.kernel, str) and self.kernel == "precomputed"}

    # ---- validation ----------------------------------------------------------------
    def _check_params(self) -> None:
        if HAVE_SKLEARN:
            self._validate_params()
        else:
            self._check_params_without_sklearn()
        if self.dtype is not None:
            _torch_dtype(self.dtype)

    def _check_params_without_sklearn(self) -> None:
        if not (callable(self.kernel) or self.kernel in KERNEL_CHOICES):
            raise ValueError(
                f"kernel: unknown kernel {self.kernel!r}; expected a callable or one of "
                f"{', '.join(KERNEL_CHOICES)}"
            )
        if isinstance(self.alpha, numbers.Real) and self.alpha < 0:
            raise ValueError(f"alpha: must be >= 0, got {self.alpha}")
        if self.gamma is not None and not self.gamma >= 0:
            raise ValueError(f"gamma: must be >= 0 or None, got {self.gamma}")
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend: expected one of {_BACKENDS}, got {self.backend!r}")

    def _device_for(self, x: Any) -> torch.device:
        if self.device is not None:
            try:
                return torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"device: not a torch device: {self.device!r}") from exc
        return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")

    def _validate_numpy(self, X, y=None, *, reset: bool):
        """scikit-learn's validation (feature names, n_features_in_, messages) for NumPy."""
        kwargs = {"accept_sparse": ("csr", "csc"), "reset": reset}
        if y is not None or reset:
            kwargs.update(multi_output=True, y_numeric=True)
            args = (X, y)
        else:
            args = (X,)
        if _sk_validate_data is not None:
            out = _sk_validate_data(self, *args, **kwargs)
        else:
            out = self._validate_data(*args, **kwargs)
        if reset:
            X, y = out
        else:
            X = out
        if hasattr(X, "toarray"):  # sparse: densify (the engines work on dense arrays)
            X = X.toarray()
        return (X, y) if reset else X

    def _validate_tensor(self, X, y=None, *, reset: bool):
        """The same checks, without scikit-learn (torch input, or sklearn not installed)."""
        if reset and y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        x = _as_tensor(X, "X")
        _check_x(x)
        if reset:
            self.n_features_in_ = x.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        if not reset:
            return x
        yt = _as_tensor(y, "y")
        if yt.ndim not in (1, 2):
            raise ValueError(f"y: expected a 1D or 2D array, got shape {tuple(yt.shape)}")
        if yt.shape[0] != x.shape[0]:
            raise ValueError(
                "Found input variables with inconsistent numbers of samples: "
                f"[{x.shape[0]}, {yt.shape[0]}]"
            )
        _check_finite(yt, "y")
        return x, yt

    def _fit_inputs(self, X, y) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(x, y, X_np) for fit: X and y validated, as tensors; X_np the validated NumPy X
        (scikit-learn then checks sample_weight against it), None for tensor input or
        without scikit-learn."""
        if isinstance(X, torch.Tensor) or not HAVE_SKLEARN:
            x, yt = self._validate_tensor(X, y, reset=True)
            return x, yt, None
        X_np, y_np = self._validate_numpy(X, y, reset=True)
        return _from_numpy(np.asarray(X_np)), _as_tensor(y_np, "y"), X_np

    def _predict_input(self, X) -> torch.Tensor:
        """X validated against the fitted estimator (n_features_in_), as a tensor."""
        if isinstance(X, torch.Tensor) or not HAVE_SKLEARN:
            return self._validate_tensor(X, reset=False)
        return _from_numpy(np.asarray(self._validate_numpy(X, reset=False)))

    def _r2_score(self, X, y, sample_weight) -> float:
        """R² of ``self.predict(X)``: scikit-learn's ``RegressorMixin.score`` for NumPy X and
        y when it is installed, else :func:`_r2` on tensors."""
        if HAVE_SKLEARN and not isinstance(X, torch.Tensor) and not isinstance(y, torch.Tensor):
            return RegressorMixin.score(self, X, y, sample_weight=sample_weight)
        pred = self.predict(X)
        pred_t = pred if isinstance(pred, torch.Tensor) else torch.from_numpy(pred)
        return _r2(y, pred_t, sample_weight)

    def _sample_weight(self, sample_weight, n: int, X_np) -> torch.Tensor | None:
        if sample_weight is None:
            return None
        if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
            sw = torch.full((n,), float(sample_weight), dtype=torch.float64)
        elif HAVE_SKLEARN and X_np is not None and not isinstance(sample_weight, torch.Tensor):
            sw = _from_numpy(np.asarray(_check_sample_weight(sample_weight, X_np)))
        else:
            sw = _as_tensor(sample_weight, "sample_weight")
            if sw.ndim != 1 or sw.shape[0] != n:
                raise ValueError(f"sample_weight.shape == {tuple(sw.shape)}, expected ({n},)!")
            if bool((sw == 0).all()):
                raise ValueError("Sample weights must contain at least one non-zero number.")
        _check_finite(sw, "sample_weight")
        if bool((sw < 0).any()):
            raise ValueError(
                "sample_weight: negative weights are not supported (kernel ridge scales the "
                "kernel rows and columns by their square roots)"
            )
        return sw

    # ---- kernel --------------------------------------------------------------------
    def _kernel_params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "degree": self.degree, "coef0": self.coef0}

    def _callable_gram(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        xn = x.cpu().numpy()
        yn = None if y is None else y.cpu().numpy()
        params = self.kernel_params or {}
        if HAVE_SKLEARN:
            from sklearn.metrics.pairwise import pairwise_kernels

            k = pairwise_kernels(xn, yn, metric=self.kernel, filter_params=True, **params)
        else:
            k = pairwise_callable(xn, yn, self.kernel, params)
        return torch.as_tensor(np.asarray(k), dtype=x.dtype).to(x.device)

    # ---- fit / predict -------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit the kernel ridge model.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)
            Training data (the kernel matrix (n_samples, n_samples) for ``"precomputed"``).
        y : array-like or Tensor of shape (n_samples,) or (n_samples, n_targets)
            Targets.
        sample_weight : float or array-like of shape (n_samples,), default=None
            Per-sample weights (≥ 0).

        Returns
        -------
        self : KernelRidge
        """
        self._check_params()
        torch_in = isinstance(X, torch.Tensor)
        x, yt, X_np = self._fit_inputs(X, y)
        dtype = self._fit_dtype(x if torch_in else None)
        device = self._device_for(X)
        x = x.to(device=device, dtype=dtype)
        yt = yt.to(device=device, dtype=dtype)
        n = x.shape[0]
        sw = self._sample_weight(sample_weight, n, X_np)
        if sw is not None:
            sw = sw.to(device=device, dtype=dtype)

        precomputed = isinstance(self.kernel, str) and self.kernel == "precomputed"
        alpha = _alpha_array(self.alpha)
        with torch.no_grad():
            if precomputed:
                if x.shape[0] != x.shape[1]:
                    raise ValueError(
                        "Precomputed metric requires shape (n_queries, n_indexed). Got "
                        f"({x.shape[0]}, {x.shape[1]}) for {x.shape[0]} indexed."
                    )
                k, own_k = x, False
            elif callable(self.kernel):
                k, own_k = self._callable_gram(x, None), True
            else:
                k = pairwise_torch(
                    x, None, self.kernel, backend=self.backend, **self._kernel_params()
                )
                own_k = True
            if not precomputed and not (isinstance(self.kernel, str) and self.kernel in NATIVE):
                # X is finite, but a kernel can still make NaN or inf (gram's native kernels
                # cannot: it refuses points and lengthscales that would overflow)
                check_gram_finite(k, self.kernel, self.degree)
            coef = solve_dual(
                k,
                yt.reshape(n, -1),
                alpha,
                sw,
                backend=self.backend,
                own_k=own_k,
                upper=precomputed,
            )
        coef = coef.reshape(yt.shape)
        if torch_in:
            self.dual_coef_, self.X_fit_ = coef, x
        else:
            self.dual_coef_ = coef.cpu().numpy()
            self.X_fit_ = x.cpu().numpy()
        return self

    def _fit_dtype(self, x: torch.Tensor | None) -> torch.dtype:
        if self.dtype is not None:
            return _torch_dtype(self.dtype)
        if x is not None and x.dtype in (torch.float32, torch.float64):
            return x.dtype
        if x is not None and x.is_floating_point():  # float16 / bfloat16
            return torch.float32
        return torch.float64

    def _fitted(self, name: str, dtype: torch.dtype | None, device: torch.device):
        value = getattr(self, name)
        t = value.detach() if isinstance(value, torch.Tensor) else _from_numpy(np.asarray(value))
        return t.to(device=device, dtype=t.dtype if dtype is None else dtype)

    def predict(self, X):
        """Predict with the fitted model.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)
            Samples (the kernel matrix (n_samples, n_samples_fitted) for ``"precomputed"``).

        Returns
        -------
        ndarray or Tensor of shape (n_samples,) or (n_samples, n_targets)
            NumPy for NumPy input; for a tensor, a tensor on its device and in its dtype.
        """
        check_is_fitted(self)
        torch_in = isinstance(X, torch.Tensor)
        x = self._predict_input(X)
        device = self._device_for(X)
        coef = self._fitted("dual_coef_", None, device)
        dtype = coef.dtype
        coef2 = coef.reshape(coef.shape[0], -1)
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            if isinstance(self.kernel, str) and self.kernel == "precomputed":
                if x.shape[1] != coef2.shape[0]:
                    raise ValueError(
                        "Precomputed metric requires shape (n_queries, n_indexed). Got "
                        f"({x.shape[0]}, {x.shape[1]}) for {coef2.shape[0]} indexed."
                    )
                out = x @ coef2
            else:
                x_fit = self._fitted("X_fit_", dtype, device)
                if callable(self.kernel):
                    out = self._callable_gram(x, x_fit) @ coef2
                else:
                    out = kernel_times(
                        x, x_fit, coef2, self.kernel, backend=self.backend, **self._kernel_params()
                    )
        out = out.reshape(x.shape[0], *coef.shape[1:])
        if not torch_in:
            return out.cpu().numpy()
        out_dtype = X.dtype if X.is_floating_point() else dtype
        return out.to(device=X.device, dtype=out_dtype)

    def score(self, X, y, sample_weight=None) -> float:
        """Coefficient of determination R² of the predictions (scikit-learn's ``r2_score``).

        Works on NumPy (through scikit-learn when installed) and on torch tensors, with
        scikit-learn's checks on both: y must be 1-D or 2-D, finite, with one row per sample
        of X and one column per target; sample_weight an array of shape (n_samples,), finite
        and not all zero. Each violation raises ValueError.

        Parameters
        ----------
        X : array-like, sparse matrix or Tensor of shape (n_samples, n_features)
            Test samples.
        y : array-like or Tensor of shape (n_samples,) or (n_samples, n_targets)
            True targets.
        sample_weight : array-like or Tensor of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        float
            R² of ``self.predict(X)``, averaged uniformly over the targets.
        """
        return self._r2_score(X, y, sample_weight)
