"""The ops: one module per op (backend adapters or kernels, reference, autograd, public op)."""

from .gram import gram, gram_ref
from .gram_matmul import gram_matmul, gram_matmul_ref
from .kernel_math import KERNEL_NAMES

__all__ = ["KERNEL_NAMES", "gram", "gram_matmul", "gram_matmul_ref", "gram_ref"]
