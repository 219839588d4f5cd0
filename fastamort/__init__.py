"""fastamort: amortised learning by wake-sleep, with fast kernel Gram and ridge engines.

The engine ops take torch tensors on any device and dispatch per call to Triton (CUDA),
the C++ extension (CPU) or the pure-PyTorch reference; see :mod:`fastamort._backends`.
"""

from __future__ import annotations

from ._backends import BACKENDS, BackendUnavailableError, backend_report, record_backends
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

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "KERNEL_NAMES",
    "BackendUnavailableError",
    "KernelRidgeResult",
    "NotPSDError",
    "NumericalWarning",
    "__version__",
    "backend_report",
    "cholesky",
    "gram",
    "gram_matmul",
    "kernel_ridge_batched",
    "record_backends",
    "ridge_solve",
]
