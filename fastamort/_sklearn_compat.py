"""scikit-learn's estimator machinery for the regressors, or minimal stand-ins without it.

scikit-learn is optional. With it installed, :class:`fastamort.KernelRidge` and
:class:`fastamort.NystromKernelRidge` are real scikit-learn estimators (``BaseEstimator`` and
the mixins, its input validation and parameter constraints). Without it the stand-ins here keep
``get_params`` / ``set_params`` / ``repr``, the exception classes and ``check_is_fitted``
working, and ``Interval`` / ``StrOptions`` are None (the regressors then check their parameters
themselves).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np

__all__ = [
    "HAVE_SKLEARN",
    "BaseEstimator",
    "ConvergenceWarning",
    "Interval",
    "InvalidParameterError",
    "MultiOutputMixin",
    "NotFittedError",
    "RegressorMixin",
    "StrOptions",
    "UndefinedMetricWarning",
    "check_is_fitted",
    "check_random_state",
    "check_sample_weight",
    "validate_data",
]

try:
    from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError, UndefinedMetricWarning
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
    from sklearn.utils.validation import _check_sample_weight as check_sample_weight
    from sklearn.utils.validation import check_is_fitted

    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # scikit-learn < 1.6: the method on BaseEstimator
        validate_data = None
    HAVE_SKLEARN = True
except ImportError:  # scikit-learn is an optional dependency
    HAVE_SKLEARN = False
    Interval = StrOptions = check_sample_weight = validate_data = None  # type: ignore[assignment]

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """Raised when predict/score is called before fit (as scikit-learn's)."""

    class InvalidParameterError(ValueError, TypeError):  # type: ignore[no-redef]
        """A parameter of the wrong type or value (as scikit-learn's)."""

    class ConvergenceWarning(UserWarning):  # type: ignore[no-redef]
        """An iterative solver stopped before reaching its tolerance (as scikit-learn's)."""

    UndefinedMetricWarning = UserWarning  # type: ignore[misc,assignment]

    class BaseEstimator:  # type: ignore[no-redef]
        """get_params/set_params from the constructor signature (scikit-learn's contract)."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            sig = inspect.signature(cls.__init__)
            return sorted(p for p in sig.parameters if p != "self")

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(
                        f"Invalid parameter {key!r} for estimator {self}. "
                        f"Valid parameters are: {valid!r}."
                    )
                setattr(self, key, value)
            return self

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class RegressorMixin:  # type: ignore[no-redef]
        """Marker; ``score`` is defined on the estimator itself."""

    class MultiOutputMixin:  # type: ignore[no-redef]
        """Marker: y may have several columns."""

    def check_random_state(seed):  # type: ignore[no-redef]
        """A RandomState from None, an int or a RandomState (scikit-learn's rule)."""
        if seed is None or seed is np.random:
            return np.random.mtrand._rand
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            return np.random.RandomState(seed)
        if isinstance(seed, np.random.RandomState):
            return seed
        raise ValueError(f"random_state: {seed!r} cannot be used to seed a RandomState instance")

    def check_is_fitted(estimator) -> None:  # type: ignore[no-redef]
        """NotFittedError unless ``estimator`` has been fitted (has ``dual_coef_``)."""
        if not hasattr(estimator, "dual_coef_"):
            raise NotFittedError(
                f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )
