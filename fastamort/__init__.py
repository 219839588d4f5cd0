"""fastamort: amortised learning by wake-sleep, with fast kernel Gram and ridge engines.

The engine ops take torch tensors on any device and dispatch per call to Triton (CUDA),
the C++ extension (CPU) or the pure-PyTorch reference; see :mod:`fastamort._backends`.
"""

from __future__ import annotations

from ._backends import BACKENDS, BackendUnavailableError, backend_report, record_backends
from .ops import KERNEL_NAMES, gram, gram_matmul

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "KERNEL_NAMES",
    "BackendUnavailableError",
    "__version__",
    "backend_report",
    "gram",
    "gram_matmul",
    "record_backends",
]
