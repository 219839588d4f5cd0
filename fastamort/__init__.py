"""fastamort: amortised learning by wake-sleep, with fast kernel Gram and ridge engines.

The engine ops take torch tensors on any device and dispatch per call to Triton (CUDA),
the C++ extension (CPU) or the pure-PyTorch reference; see :mod:`fastamort._backends`.
"""

from __future__ import annotations

from . import kernels, models
from ._backends import BACKENDS, BackendUnavailableError, backend_report, record_backends
from ._version import __version__
from .estimator import AmortisedEstimate, amortised_estimate, amortised_objective
from .kernel_learning import kernel_loss
from .learner import AmortisedLearner, NonFiniteError
from .learner_config import LearnerConfig
from .models.base import ExpFamModel, GenerativeModel
from .ops import (
    KERNEL_NAMES,
    KernelRidgeResult,
    NotPSDError,
    NumericalWarning,
    cholesky,
    gram,
    gram_matmul,
    kernel_ridge_batched,
    ridge_solve,
)
from .solvers import SolverConfig


def __getattr__(name: str):
    # the regressors are imported on first use: they pull in scikit-learn (optional) if installed
    if name == "KernelRidge":
        from .regressor import KernelRidge

        return KernelRidge
    if name == "NystromKernelRidge":
        from .nystrom_regressor import NystromKernelRidge

        return NystromKernelRidge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "KERNEL_NAMES",
    "AmortisedEstimate",
    "AmortisedLearner",
    "BackendUnavailableError",
    "ExpFamModel",
    "GenerativeModel",
    "KernelRidge",
    "KernelRidgeResult",
    "LearnerConfig",
    "NonFiniteError",
    "NotPSDError",
    "NumericalWarning",
    "NystromKernelRidge",
    "SolverConfig",
    "__version__",
    "amortised_estimate",
    "amortised_objective",
    "backend_report",
    "cholesky",
    "gram",
    "gram_matmul",
    "kernel_loss",
    "kernel_ridge_batched",
    "kernels",
    "models",
    "record_backends",
    "ridge_solve",
]
