"""(K + αI)⁻¹ B in float64 from a float32 Cholesky factor and float64 iterative refinement.

A composite of the engine ops, not a kernel of its own: on the CPU a float32 factorisation runs
at about 2.5× the float64 rate (measured n = 4000: 170 against 65 GFLOP/s on 2 cores), and a
few float64 residual products bring the solution to the backward error of a float64 Cholesky
solve. Used by ``fastamort.KernelRidge`` and by the exact solver of the amortised estimator
for large float64 problems; callers fall back to :func:`fastamort.ridge_solve` when it
declines (``None``: the float32 factorisation fails or the refinement stops converging, that
is κ(K + αI)·eps₃₂ is not small).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .._backends import cpp_unavailable_reason
from . import _cpp
from ._library import traced
from .cholesky import NotPSDError, cholesky
from .ridge_solve import k_and_lam_grads, ridge_solve

#: float64 solves on the CPU from this n on try a float32 factorisation with float64 refinement.
MIXED_MIN_N = 1536
#: Refinement steps before giving up on the float32 factor (LAPACK's dsposv: 30; fewer here,
#: so that a slowly converging refinement never costs more than the float64 factorisation).
MIXED_MAX_STEPS = 10
#: ... and when n is at least this many times the number of right-hand sides: each refinement
#: step costs O(n²p), so with many columns the float64 factorisation is cheaper (measured
#: n = 2000, p = 129: 135 against 55 ms; n = 5000, p = 6: 335 against 618 ms).
MIXED_N_PER_RHS = 50


def _narrowed_factor(k: torch.Tensor, alpha: float, backend: str):
    """(‖K‖_F, L₃₂) for A = K + αI, or None when the float32 factorisation fails.

    The C++ route narrows K while copying it into the factor and sums ‖K‖_F² in the same pass
    (no float32 copy of K and no second read); the other backends copy, factor and take the
    norm separately. :func:`_solve32` applies A₃₂⁻¹ by two triangular solves (one BLAS call
    each; the blocked solve's barriers cost more than the memory-bound p = 1 solve on a loaded
    machine; torch.cholesky_solve would copy the factor).
    """
    if not bool(torch.isfinite(k.diagonal()).all()) or not math.isfinite(alpha):
        return None
    if backend in ("auto", "cpp") and k.is_contiguous() and cpp_unavailable_reason() is None:
        lower, info, frobenius_sq = _cpp.cholesky_narrowed(k, alpha)
        if info != 0 or not math.isfinite(frobenius_sq):
            return None
        k_norm = math.sqrt(frobenius_sq)
    else:
        a32 = k.to(torch.float32)
        a32.diagonal().add_(alpha)
        if not bool(torch.isfinite(a32.diagonal()).all()):
            return None
        try:
            lower = cholesky(a32, jitter=0, backend=backend)
        except (NotPSDError, ValueError):  # indefinite, or overflow to inf in float32
            return None
        del a32
        k_norm = float(torch.linalg.vector_norm(k))

    return k_norm, lower


def _solve32(lower: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """A₃₂⁻¹ r for the float32 factor ``lower`` and float64 r (n, p), in float64."""
    z = torch.linalg.solve_triangular(lower, rhs.to(torch.float32), upper=False)
    return torch.linalg.solve_triangular(lower.mT, z, upper=True).to(torch.float64)


def _refine(k: torch.Tensor, alpha: float, factored, b: torch.Tensor) -> torch.Tensor | None:
    """x = (K + αI)⁻¹ b by refinement on the float32 factor ``factored`` (see solve_mixed)."""
    n = k.shape[0]
    k_norm, lower = factored
    a_norm = k_norm + abs(alpha) * math.sqrt(n)
    tol = a_norm * float(torch.finfo(torch.float64).eps) * math.sqrt(n)

    x = _solve32(lower, b)
    last = math.inf
    for _ in range(MIXED_MAX_STEPS):
        r = torch.addmm(b, k, x, alpha=-1.0).sub_(x, alpha=alpha)
        r_norm = r.abs().amax(0)
        if bool((r_norm <= tol * x.abs().amax(0)).all()):
            return x
        worst = float(r_norm.max())
        if not math.isfinite(worst) or worst > 0.5 * last:  # not converging: κ too large
            return None
        last = worst
        scale = r_norm.clamp_min(torch.finfo(torch.float64).tiny)  # keep r in float32 range
        x.add_(_solve32(lower, r / scale) * scale)
    return None


def solve_mixed(
    k: torch.Tensor, b: torch.Tensor, alpha: float, backend: str = "auto"
) -> torch.Tensor | None:
    """(K + αI)⁻¹ b in float64 from a float32 Cholesky factor and float64 refinement.

    K (n, n) and b (n, p) float64, no gradient. LAPACK's ``dsposv`` scheme: factor
    A = K + αI in float32 (about twice the float64 speed), then x ← x + A₃₂⁻¹ r with the
    residual r = b − A x in float64, until for every column
    ‖r‖∞ ≤ ‖x‖∞ · ‖A‖_F · eps₆₄ · √n, the backward error of a float64 Cholesky solve
    (``dsposv`` uses ‖A‖∞; the Frobenius norm needs no n × n temporary). Converges when
    κ(A)·eps₃₂ ≪ 1; returns None when the float32 factorisation fails or the residual stops
    shrinking, and the caller then factors in float64.
    """
    factored = _narrowed_factor(k, alpha, backend)
    return None if factored is None else _refine(k, alpha, factored, b)


class _MixedRidgeSolve(torch.autograd.Function):
    """X = (K + λI)⁻¹ B by solve_mixed; the backward solve reuses the float32 factor."""

    @staticmethod
    def forward(ctx, k, b, lam, solved):  # type: ignore[override]
        factored, x = solved  # solved outside: the float32 route may decline, as None
        ctx.save_for_backward(k, x, lam)
        ctx.factored = factored
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):  # type: ignore[override]
        k, x, lam = ctx.saved_tensors
        alpha = float(lam)
        grad_b = _refine(k, alpha, ctx.factored, grad_x.contiguous())
        if grad_b is None:  # converged forward, so this is not expected: solve in float64
            a = k.clone()
            a.diagonal().add_(alpha)
            grad_b = torch.linalg.solve(a, grad_x)
        need_k, _, need_lam, *_ = ctx.needs_input_grad
        grad_k, grad_lam = k_and_lam_grads(grad_b, x, need_k, need_lam)
        return grad_k, grad_b, grad_lam, None


# --------------------------------------------------------------------------------------
# Registered ops (see fastamort.ops._library): fastamort::ridge_solve_mixed never declines
# (when the float32 route does, its body solves in float64 and returns k_norm = -1, the
# factor zeros); the backward refines on the saved float32 factor by
# fastamort::ridge_refine_solve. K (n, n), B (n, p) float64, λ 0-d.
# --------------------------------------------------------------------------------------
@torch.library.custom_op("fastamort::ridge_solve_mixed", mutates_args=())
def ridge_solve_mixed_op(
    k: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X (n, p), L₃₂ (n, n) float32, ‖K‖_F 0-d): X = (K + λI)⁻¹ B."""
    alpha = float(lam)
    factored = _narrowed_factor(k, alpha, backend)
    x = None if factored is None else _refine(k, alpha, factored, b)
    if x is None:
        x = ridge_solve(k, b, alpha, backend=backend)  # the float64 route
        lower = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        return x.contiguous(), lower, torch.tensor(-1.0, dtype=torch.float64)
    k_norm, lower = factored
    return x.contiguous(), lower.contiguous(), torch.tensor(k_norm, dtype=torch.float64)


@ridge_solve_mixed_op.register_fake
def _(k, b, lam, backend):
    return b.new_empty(b.shape), k.new_empty(k.shape, dtype=torch.float32), k.new_empty(())


@torch.library.custom_op("fastamort::ridge_refine_solve", mutates_args=())
def ridge_refine_solve_op(
    k: torch.Tensor, lam: torch.Tensor, lower: torch.Tensor, k_norm: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """(K + λI)⁻¹ G by refinement on the float32 factor ``lower`` (float64 solve when there is
    none, ``k_norm`` < 0, or the refinement does not converge)."""
    alpha, norm = float(lam), float(k_norm)
    grad_b = None if norm < 0 else _refine(k, alpha, (norm, lower), g.contiguous())
    if grad_b is None:
        a = k.clone()
        a.diagonal().add_(alpha)
        grad_b = torch.linalg.solve(a, g)
    return grad_b.contiguous()


@ridge_refine_solve_op.register_fake
def _(k, lam, lower, k_norm, g):
    return g.new_empty(g.shape)


def _setup(ctx, inputs, output):
    k, _, lam, _ = inputs
    x, lower, k_norm = output
    ctx.save_for_backward(k, lam, x, lower, k_norm)


def _backward(ctx, grad_x, _grad_lower, _grad_norm):
    k, lam, x, lower, k_norm = ctx.saved_tensors
    grad_b = ridge_refine_solve_op(k.detach(), lam.detach(), lower, k_norm, grad_x)
    need_k, _, need_lam, *_ = ctx.needs_input_grad
    grad_k, grad_lam = k_and_lam_grads(grad_b, x, need_k, need_lam)
    return grad_k, grad_b, grad_lam, None


ridge_solve_mixed_op.register_autograd(_backward, setup_context=_setup)


def ridge_solve_mixed(
    k: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, backend: str = "auto"
) -> torch.Tensor | None:
    """:func:`solve_mixed` differentiable w.r.t. K (n, n), b (n, p) and a tensor λ, or None.

    The backward pass refines A₃₂⁻¹ Ẋ in the same way, so a gradient costs a few float64
    products instead of a float64 factorisation. None when the float32 route declines (under
    ``torch.compile`` and ``torch.func``, the registered op solves in float64 instead).
    """
    lam_t = lam if isinstance(lam, torch.Tensor) else torch.tensor(float(lam), dtype=k.dtype)
    if traced():  # the registered op: never None, it falls back to float64 inside
        return ridge_solve_mixed_op(k, b, lam_t.to(k.dtype), backend)[0]
    alpha = float(lam_t.detach())
    k_d, b_d = k.detach(), b.detach()
    factored = _narrowed_factor(k_d, alpha, backend)
    if factored is None:
        return None
    x = _refine(k_d, alpha, factored, b_d)
    if x is None:
        return None
    if not (k.requires_grad or b.requires_grad or lam_t.requires_grad):
        return x
    return _MixedRidgeSolve.apply(k, b, lam_t, (factored, x))


def mixed_applies(k: torch.Tensor, n_rhs: int, backend: str) -> bool:
    """Whether a solve with K (n, n) and ``n_rhs`` right-hand sides should try float32 first."""
    n = k.shape[-1]
    return (
        k.dtype == torch.float64
        and k.device.type == "cpu"
        and k.ndim == 2
        and n >= MIXED_MIN_N
        and n >= MIXED_N_PER_RHS * n_rhs
        and backend != "torch"
    )
