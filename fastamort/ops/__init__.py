"""The ops: one module per op (backend adapters or kernels, reference, autograd, public op)."""

from .cholesky import NotPSDError, NumericalWarning, cholesky, cholesky_ref
from .gram import gram, gram_ref
from .gram_matmul import gram_matmul, gram_matmul_ref
from .kernel_math import KERNEL_NAMES
from .kernel_ridge_batched import KernelRidgeResult, kernel_ridge_batched, kernel_ridge_batched_ref
from .ridge_solve import ridge_solve, ridge_solve_ref
from .standard_normal import standard_normal, standard_normal_like, standard_normal_ref

__all__ = [
    "KERNEL_NAMES",
    "KernelRidgeResult",
    "NotPSDError",
    "NumericalWarning",
    "cholesky",
    "cholesky_ref",
    "gram",
    "gram_matmul",
    "gram_matmul_ref",
    "gram_ref",
    "kernel_ridge_batched",
    "kernel_ridge_batched_ref",
    "ridge_solve",
    "ridge_solve_ref",
    "standard_normal",
    "standard_normal_like",
    "standard_normal_ref",
]
