"""Triton kernels and launchers for Cholesky factorisation and ridge solves.

The adapter interface of :mod:`fastamort.ops.cholesky` (inputs validated by the caller: batched
3-D float32 / float64 on CUDA, or on the CPU under ``TRITON_INTERPRET=1``; ``shift`` a float64
``(B,)`` tensor on the same device):

* :func:`factor`: ``L`` of ``a + shift·I`` (lower triangle of ``a`` read) and ``info``;
* :func:`solve`: ``x`` with ``L Lᵀ x = b``;
* :func:`ridge`: factor and solve, ``x = NaN`` for the members that failed;
* :func:`kernel_ridge_batched`: Gram + factor + solve (+ prediction) fused per problem.

Three factorisation methods (``method=``):

``small``     one program per matrix, the whole ``n × n`` tile in registers, a right-looking
              column loop (``n ≤ SMALL_MAX_N`` by default; forced up to ``SMALL_LIMIT_N``);
``blocked``   right-looking blocked Cholesky in ``BLOCKED_NB`` columns: per block column a panel
              launch (the small logic on the diagonal tile), a triangular solve of the panel below
              it and a ``tl.dot`` trailing update of the lower part;
``cusolver``  ``torch.linalg.cholesky_ex`` (cuSOLVER ``potrf`` on CUDA).

``auto`` picks ``small`` up to ``SMALL_MAX_N``, then ``cusolver`` from ``CUSOLVER_MIN_N`` on real
CUDA, ``blocked`` in between, and always ``blocked`` under the interpreter (so CI runs the Triton
kernels). Accumulation is in the input dtype (fp32 or fp64); every ``tl.dot`` uses
``input_precision="ieee"`` (TF32 is too inaccurate for a Cholesky). Failures never stop a
launch: a pivot that is not positive and finite records ``info = j + 1`` (first failure) and is
replaced by 1 so the static loops run to the end; ``info`` lives in device memory, so no launcher
synchronises with the host.

Under ``TRITON_INTERPRET=1`` every autotuned kernel gets exactly one config (the interpreter
cannot benchmark two or more: "0 active drivers").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._jitter import mark_tiny_pivots
from ._torch import symmetric_rank2k  # noqa: F401  (RidgeBackend: cuBLAS's GEMM on CUDA)
from ._triton_gram import (
    INTERPRETER,
    _k_of_s,
    _norm_stride,
    _pow2_block,
    _prepare,
    _s_tile_direct,
    _tri_index,
    _unflatten,
    gram_forward,
    gram_matmul_forward,
)
from .kernel_math import KERNEL_IDS

# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------

#: Largest n that ``auto`` gives the one-program-per-matrix kernels. Each column step is two
#: cross-thread reductions over the whole tile plus a rank-1 update: cheap while the tile fits
#: in one program's registers (32 × 32 fp64 = 8 KiB), and FlagGems measured such kernels winning
#: only up to n ≈ 16–32 (shared/reference/PERFORMANCE.md §4.2). To be confirmed by
#: bench/bench_ridge.py on the H200.
SMALL_MAX_N = 32
#: Largest n that ``method="small"`` accepts: a 64 × 64 register tile (offline sm_90 compile:
#: fp64 at 64 already needs 4+ warps not to spill; 128 would spill whatever the warps).
SMALL_LIMIT_N = 64
#: Smallest n that ``auto`` sends to cuSOLVER (``torch.linalg.cholesky_ex``) on real CUDA:
#: PERFORMANCE.md §4.2 has Triton Cholesky 10–300× slower than potrf from n ≈ 64. MUST be
#: confirmed (or moved) by bench/bench_ridge.py on the H200.
CUSOLVER_MIN_N = 64
#: Largest n that ``kernel_ridge_batched`` fuses into one program per problem (same register
#: budget as the small factorisation); larger problems run gram → factor/solve → gram_matmul.
FUSED_MAX_N = 32
#: Block column width of the blocked factorisation (tl.dot needs dimensions >= 16).
BLOCKED_NB = 32

METHODS = ("auto", "small", "blocked", "cusolver")

_BLOCKED_WARPS = 4


# --------------------------------------------------------------------------------------------
# Autotune configurations (only for the kernels that never read what they write: autotuning
# reruns a kernel, which would apply the in-place blocked updates twice)
# --------------------------------------------------------------------------------------------


def _warps_configs(*warps: int, interpreter: bool = INTERPRETER) -> list[triton.Config]:
    # The interpreter cannot benchmark 2+ configs ("0 active drivers"): keep one there.
    chosen = warps[-1:] if interpreter else warps
    return [triton.Config({}, num_warps=w, num_stages=1) for w in chosen]


# Few warps keep the per-column reductions cheap (1 warp: shuffles only); more warps spread the
# tile over more registers (offline sm_90 compile: a 64 × 64 fp64 tile spills with 1–2 warps,
# not with 4). Which wins depends on n: let the autotuner pick per power-of-two size bucket.
_SMALL_WARPS = (1, 2, 4, 8)
_FUSED_WARPS = (2, 4)
_SMALL_CONFIGS = _warps_configs(*_SMALL_WARPS)
_FUSED_CONFIGS = _warps_configs(*_FUSED_WARPS)


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _chol_tile(a, rows, cols, n):
    """In-register Cholesky of the first ``n`` rows/columns of ``a[BLOCK, BLOCK]``.

    Reads only ``a``'s lower triangle (``rows``/``cols``: the tile's local indices). Returns
    ``(L, info)``: ``L`` lower with exact zeros above the diagonal (and in the padding), ``info``
    (int32 scalar) ``j + 1`` for the first pivot ``j`` that is not positive and finite, else 0.
    A failed pivot is replaced by 1 so the loop runs on without NaN-driven control flow.
    """
    lower = cols[None, :] <= rows[:, None]
    a = tl.where(lower, a, 0.0)
    info = tl.full([], 0, tl.int32)
    for j in range(n):
        col = tl.sum(tl.where(cols[None, :] == j, a, 0.0), axis=1)  # a[:, j]
        pivot = tl.sum(tl.where(rows == j, col, 0.0), axis=0)
        ok = (pivot > 0.0) & (pivot < float("inf"))  # NaN fails both comparisons
        info = tl.where(ok | (info != 0), info, j + 1)
        d = tl.sqrt(tl.where(ok, pivot, 1.0))
        lcol = tl.where(rows > j, col / d, tl.where(rows == j, d, 0.0))
        # column j becomes L[:, j]; the trailing lower part gets the rank-1 update
        a = tl.where(cols[None, :] == j, lcol[:, None], a)
        trail = lower & (cols[None, :] > j)
        a = tl.where(trail, a - lcol[:, None] * lcol[None, :], a)
    return a, info


@triton.jit
def _chol_subst(lo, rhs, rows, cols, n):
    """``x[BLOCK, BLOCK_P]`` with ``L Lᵀ x = rhs`` for the lower tile ``lo`` (first ``n`` rows).

    Forward substitution ``L y = rhs`` then back substitution ``Lᵀ x = y``, both column-oriented
    (one row of the right-hand sides finished per step, the rest updated by a rank-1 term).
    """
    for j in range(n):
        lcol = tl.sum(tl.where(cols[None, :] == j, lo, 0.0), axis=1)  # L[:, j]
        d = tl.sum(tl.where(rows == j, lcol, 0.0), axis=0)
        yj = tl.sum(tl.where(rows[:, None] == j, rhs, 0.0), axis=0) / d
        rhs = tl.where(rows[:, None] > j, rhs - lcol[:, None] * yj[None, :], rhs)
        rhs = tl.where(rows[:, None] == j, yj[None, :], rhs)
    for jj in range(n):
        j = n - 1 - jj
        lrow = tl.sum(tl.where(rows[:, None] == j, lo, 0.0), axis=0)  # L[j, :] = Lᵀ[:, j]
        d = tl.sum(tl.where(cols == j, lrow, 0.0), axis=0)
        xj = tl.sum(tl.where(rows[:, None] == j, rhs, 0.0), axis=0) / d
        rhs = tl.where(rows[:, None] < j, rhs - lrow[:, None] * xj[None, :], rhs)
        rhs = tl.where(rows[:, None] == j, xj[None, :], rhs)
    return rhs


@triton.jit
def _solve_store(
    lo,
    info,
    b_base,
    x_base,
    rows,
    cols,
    mask_n,
    N,
    P,
    stride_bn,
    stride_bp,
    stride_xn,
    stride_xp,
    BLOCK_P: tl.constexpr,
):
    """Solves for all ``P`` columns of ``b`` in ``BLOCK_P`` chunks and stores ``x`` (NaN where
    ``info != 0``)."""
    rn = rows.to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + offs_p
        mask = mask_n[:, None] & (pp < P)[None, :]
        rhs = tl.load(
            b_base + rn[:, None] * stride_bn + pp[None, :] * stride_bp, mask=mask, other=0.0
        )
        x = _chol_subst(lo, rhs, rows, cols, N)
        x = tl.where(info == 0, x, float("nan"))
        tl.store(x_base + rn[:, None] * stride_xn + pp[None, :] * stride_xp, x, mask=mask)


# --------------------------------------------------------------------------------------------
# Small kernels: one program per matrix (1-D grid over the batch)
# --------------------------------------------------------------------------------------------


@triton.jit
def _factor_small_kernel(
    a_ptr,
    shift_ptr,
    l_ptr,
    info_ptr,
    N,
    # a (B, N, N)
    stride_ab,
    stride_am,
    stride_an,
    # L (B, N, N)
    stride_lb,
    stride_lm,
    stride_ln,
    BLOCK_N: tl.constexpr,
):
    """``L = chol(a_b + shift_b·I)`` for one matrix; ``info[b]`` as in :func:`_chol_tile`."""
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    mask_n = rows < N
    mask = mask_n[:, None] & mask_n[None, :]
    rn = rows.to(tl.int64)

    # lower triangle of a (upper never read), plus the shift on the diagonal
    a = tl.load(
        a_ptr + pid_b * stride_ab + rn[:, None] * stride_am + rn[None, :] * stride_an,
        mask=mask & (cols[None, :] <= rows[:, None]),
        other=0.0,
    )
    shift = tl.load(shift_ptr + pid_b).to(a.dtype)
    a = tl.where(mask & (rows[:, None] == cols[None, :]), a + shift, a)

    lo, info = _chol_tile(a, rows, cols, N)
    l_out = l_ptr + pid_b * stride_lb + rn[:, None] * stride_lm + rn[None, :] * stride_ln
    tl.store(l_out, lo, mask=mask)  # full square: exact zeros above the diagonal
    tl.store(info_ptr + pid_b, info.to(tl.int64))


@triton.jit
def _ridge_small_kernel(
    k_ptr,
    b_ptr,
    shift_ptr,
    x_ptr,
    l_ptr,
    info_ptr,
    N,
    P,
    # k (B, N, N)
    stride_kb,
    stride_km,
    stride_kn,
    # b (B, N, P)
    stride_bb,
    stride_bn,
    stride_bp,
    # x (B, N, P)
    stride_xb,
    stride_xn,
    stride_xp,
    # L (B, N, N)
    stride_lb,
    stride_lm,
    stride_ln,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Factor ``k_b + shift_b·I`` and solve for ``b_b`` in one program; ``L`` stays in registers
    between the two."""
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    mask_n = rows < N
    mask = mask_n[:, None] & mask_n[None, :]
    rn = rows.to(tl.int64)

    # lower triangle of k, plus the shift on the diagonal
    a = tl.load(
        k_ptr + pid_b * stride_kb + rn[:, None] * stride_km + rn[None, :] * stride_kn,
        mask=mask & (cols[None, :] <= rows[:, None]),
        other=0.0,
    )
    shift = tl.load(shift_ptr + pid_b).to(a.dtype)
    a = tl.where(mask & (rows[:, None] == cols[None, :]), a + shift, a)

    lo, info = _chol_tile(a, rows, cols, N)
    l_out = l_ptr + pid_b * stride_lb + rn[:, None] * stride_lm + rn[None, :] * stride_ln
    tl.store(l_out, lo, mask=mask)
    tl.store(info_ptr + pid_b, info.to(tl.int64))
    _solve_store(
        lo,
        info,
        b_ptr + pid_b * stride_bb,
        x_ptr + pid_b * stride_xb,
        rows,
        cols,
        mask_n,
        N,
        P,
        stride_bn,
        stride_bp,
        stride_xn,
        stride_xp,
        BLOCK_P,
    )


@triton.jit
def _solve_small_kernel(
    l_ptr,
    b_ptr,
    x_ptr,
    N,
    P,
    # L (B, N, N)
    stride_lb,
    stride_lm,
    stride_ln,
    # b (B, N, P)
    stride_bb,
    stride_bn,
    stride_bp,
    # x (B, N, P)
    stride_xb,
    stride_xn,
    stride_xp,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``x = L⁻ᵀ L⁻¹ b`` for one matrix and one ``BLOCK_P`` chunk of columns (1-D grid:
    P chunks × batch)."""
    pid_p, _, pid_b = _unflatten(tl.program_id(0), tl.cdiv(P, BLOCK_P), 1)
    pid_b = pid_b.to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    mask_n = rows < N
    rn = rows.to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P

    # lower triangle of L
    lo = tl.load(
        l_ptr + pid_b * stride_lb + rn[:, None] * stride_lm + rn[None, :] * stride_ln,
        mask=mask_n[:, None] & mask_n[None, :] & (cols[None, :] <= rows[:, None]),
        other=0.0,
    )
    # b chunk
    mask = mask_n[:, None] & mask_p[None, :]
    rhs = tl.load(
        b_ptr + pid_b * stride_bb + rn[:, None] * stride_bn + offs_p[None, :] * stride_bp,
        mask=mask,
        other=0.0,
    )
    x = _chol_subst(lo, rhs, rows, cols, N)
    x_out = x_ptr + pid_b * stride_xb + rn[:, None] * stride_xn + offs_p[None, :] * stride_xp
    tl.store(x_out, x, mask=mask)


# --------------------------------------------------------------------------------------------
# Blocked kernels: in place on W (B, N, N) = tril(a) + shift·I, one block column per round
# --------------------------------------------------------------------------------------------


@triton.jit
def _panel_kernel(
    w_ptr,
    info_ptr,
    K0,
    WIDTH,
    # W (B, N, N)
    stride_wb,
    stride_wm,
    stride_wn,
    NB: tl.constexpr,
):
    """Factors the diagonal tile ``W[K0:K0+WIDTH, K0:K0+WIDTH]`` in place (1-D grid: batch).

    ``info[b]`` keeps an earlier failure, else becomes ``K0 + j + 1`` for a failed pivot here.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NB)
    mask_w = offs < WIDTH
    mask = mask_w[:, None] & mask_w[None, :] & (offs[None, :] <= offs[:, None])
    rg = (K0 + offs).to(tl.int64)  # global row/column indices

    # diagonal tile, lower part
    tile_ptr = w_ptr + pid_b * stride_wb + rg[:, None] * stride_wm + rg[None, :] * stride_wn
    a = tl.load(tile_ptr, mask=mask, other=0.0)
    lo, local = _chol_tile(a, offs, offs, WIDTH)
    tl.store(tile_ptr, lo, mask=mask)  # lower part only: W's upper triangle stays zero

    old = tl.load(info_ptr + pid_b)
    new = tl.where(local != 0, K0 + local, 0).to(tl.int64)
    tl.store(info_ptr + pid_b, tl.where(old != 0, old, new))


@triton.jit
def _panel_trsm_kernel(
    w_ptr,
    K0,
    N,
    # W (B, N, N)
    stride_wb,
    stride_wm,
    stride_wn,
    NB: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``L21 = A21 L11⁻ᵀ`` for ``BLOCK_M`` rows below the factored diagonal tile (1-D grid:
    row blocks × batch). Column by column: ``X[:, j] /= L11[j, j]``, then the later columns
    lose ``X[:, j] L11[t, j]``."""
    pid_m, _, pid_b = _unflatten(tl.program_id(0), tl.cdiv(N - K0 - NB, BLOCK_M), 1)
    pid_b = pid_b.to(tl.int64)
    offs = tl.arange(0, NB)
    rows = K0 + NB + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < N
    w_base = w_ptr + pid_b * stride_wb
    rk = (K0 + offs).to(tl.int64)  # the panel's global columns (all < N: a full block)

    # L11 (NB, NB), lower part
    l11 = tl.load(
        w_base + rk[:, None] * stride_wm + rk[None, :] * stride_wn,
        mask=offs[None, :] <= offs[:, None],
        other=0.0,
    )
    # A21 rows (BLOCK_M, NB)
    panel_ptr = w_base + rows.to(tl.int64)[:, None] * stride_wm + rk[None, :] * stride_wn
    x = tl.load(panel_ptr, mask=mask_m[:, None], other=0.0)
    for j in range(NB):
        lcol = tl.sum(tl.where(offs[None, :] == j, l11, 0.0), axis=1)  # L11[:, j]
        d = tl.sum(tl.where(offs == j, lcol, 0.0), axis=0)
        xj = tl.sum(tl.where(offs[None, :] == j, x, 0.0), axis=1) / d
        x = tl.where(offs[None, :] > j, x - xj[:, None] * lcol[None, :], x)
        x = tl.where(offs[None, :] == j, xj[:, None], x)
    tl.store(panel_ptr, x, mask=mask_m[:, None])


@triton.jit
def _trailing_kernel(
    w_ptr,
    K0,
    N,
    # W (B, N, N)
    stride_wb,
    stride_wm,
    stride_wn,
    NB: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``A22 -= L21 L21ᵀ`` on one lower tile ``(tm >= tn)`` of the trailing matrix (1-D grid:
    lower tiles × batch); the diagonal tiles store their lower part only."""
    t0 = K0 + NB
    num_t = tl.cdiv(N - t0, BLOCK_T)
    tile, _, pid_b = _unflatten(tl.program_id(0), num_t * (num_t + 1) // 2, 1)
    tm, tn = _tri_index(tile)
    pid_b = pid_b.to(tl.int64)
    offs_k = tl.arange(0, NB)
    offs_m = t0 + tm * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = t0 + tn * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_m = offs_m < N
    mask_n = offs_n < N
    w_base = w_ptr + pid_b * stride_wb
    rm = offs_m.to(tl.int64)
    rn = offs_n.to(tl.int64)
    rk = (K0 + offs_k).to(tl.int64)

    # L21 rows of the tile's rows (BLOCK_T, NB) and, transposed, of its columns (NB, BLOCK_T)
    l_m = tl.load(
        w_base + rm[:, None] * stride_wm + rk[None, :] * stride_wn,
        mask=mask_m[:, None],
        other=0.0,
    )
    l_nt = tl.load(
        w_base + rn[None, :] * stride_wm + rk[:, None] * stride_wn,
        mask=mask_n[None, :],
        other=0.0,
    )
    # A22 tile: lower part and inside the matrix only
    mask = mask_m[:, None] & mask_n[None, :] & (offs_n[None, :] <= offs_m[:, None])
    a_ptr = w_base + rm[:, None] * stride_wm + rn[None, :] * stride_wn
    a = tl.load(a_ptr, mask=mask, other=0.0)
    a = tl.dot(-l_m, l_nt, a, input_precision="ieee")
    tl.store(a_ptr, a, mask=mask)


# --------------------------------------------------------------------------------------------
# Fused kernel ridge regression: one program per problem, K only in registers
# --------------------------------------------------------------------------------------------


@triton.jit
def _krr_fused_kernel(
    x_ptr,
    nx_ptr,
    xn_ptr,
    nxn_ptr,
    y_ptr,
    shift_ptr,
    ell_ptr,
    alpha_ptr,
    pred_ptr,
    info_ptr,
    N,
    M,
    D,
    P,
    # x (B, N, D), centred for Euclidean kernels
    stride_xb,
    stride_xn,
    stride_xd,
    # x_new (B, M, D), centred like x
    stride_qb,
    stride_qm,
    stride_qd,
    # squared norms nx (B, N), nxn (B, M), contiguous rows (0: Laplacian placeholder)
    stride_nxb,
    stride_nqb,
    # y (B, N, P)
    stride_yb,
    stride_yn,
    stride_yp,
    # alpha (B, N, P)
    stride_ab,
    stride_an,
    stride_ap,
    # pred (B, M, P)
    stride_pb,
    stride_pm,
    stride_pp,
    KERNEL: tl.constexpr,
    HAS_NEW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``alpha = (K(x, x) + shift·I)⁻¹ y`` and ``pred = K(x_new, x) alpha`` for one problem.

    ``K(x, x)`` is built from :func:`_s_tile_direct` / :func:`_k_of_s` of :mod:`._triton_gram` (unit
    diagonal; only its lower triangle is used), factored and solved in registers, never stored.
    The prediction is computed per ``BLOCK_P`` chunk of ``alpha`` while it is in registers.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    mask_n = rows < N
    rn = rows.to(tl.int64)
    ell = tl.load(ell_ptr)

    # per-problem bases
    x_base = x_ptr + pid_b * stride_xb
    q_base = xn_ptr + pid_b * stride_qb
    y_base = y_ptr + pid_b * stride_yb
    a_base = alpha_ptr + pid_b * stride_ab
    p_base = pred_ptr + pid_b * stride_pb

    # K + shift·I, lower triangle (padding rows/columns zeroed)
    s = _s_tile_direct(
        x_base,
        x_base,
        rows,
        cols,
        mask_n,
        mask_n,
        stride_xn,
        stride_xd,
        stride_xn,
        stride_xd,
        D,
        ell,
        KERNEL,
        True,
        BLOCK_N,
        BLOCK_N,
    )
    k = _k_of_s(s, KERNEL)
    inside = mask_n[:, None] & mask_n[None, :]
    k = tl.where(inside & (cols[None, :] <= rows[:, None]), k, 0.0)
    shift = tl.load(shift_ptr + pid_b).to(k.dtype)
    k = tl.where(inside & (rows[:, None] == cols[None, :]), k + shift, k)
    lo, info = _chol_tile(k, rows, cols, N)
    tl.store(info_ptr + pid_b, info.to(tl.int64))

    offs_p = tl.arange(0, BLOCK_P)
    offs_m0 = tl.arange(0, BLOCK_M)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + offs_p
        mask_p = pp < P
        mask = mask_n[:, None] & mask_p[None, :]
        rhs = tl.load(
            y_base + rn[:, None] * stride_yn + pp[None, :] * stride_yp, mask=mask, other=0.0
        )
        alpha = _chol_subst(lo, rhs, rows, cols, N)
        alpha = tl.where(info == 0, alpha, float("nan"))
        alpha = tl.where(mask, alpha, 0.0)  # padding rows must not reach the prediction
        tl.store(a_base + rn[:, None] * stride_an + pp[None, :] * stride_ap, alpha, mask=mask)
        if HAS_NEW:
            for m0 in range(0, M, BLOCK_M):
                offs_m = m0 + offs_m0
                mask_m = offs_m < M
                s_new = _s_tile_direct(
                    q_base,
                    x_base,
                    offs_m,
                    cols,
                    mask_m,
                    mask_n,
                    stride_qm,
                    stride_qd,
                    stride_xn,
                    stride_xd,
                    D,
                    ell,
                    KERNEL,
                    False,
                    BLOCK_M,
                    BLOCK_N,
                )
                k_new = tl.where(mask_n[None, :], _k_of_s(s_new, KERNEL), 0.0)
                pred = tl.dot(k_new, alpha, input_precision="ieee")
                out = p_base + offs_m.to(tl.int64)[:, None] * stride_pm + pp[None, :] * stride_pp
                tl.store(out, pred, mask=mask_m[:, None] & mask_p[None, :])


_factor_small = triton.autotune(configs=_SMALL_CONFIGS, key=["BLOCK_N"])(_factor_small_kernel)
_ridge_small = triton.autotune(configs=_SMALL_CONFIGS, key=["BLOCK_N", "BLOCK_P"])(
    _ridge_small_kernel
)
_solve_small = triton.autotune(configs=_SMALL_CONFIGS, key=["BLOCK_N", "BLOCK_P"])(
    _solve_small_kernel
)
_krr_fused = triton.autotune(
    configs=_FUSED_CONFIGS, key=["BLOCK_N", "BLOCK_P", "BLOCK_K", "KERNEL", "HAS_NEW"]
)(_krr_fused_kernel)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _choose(n: int, device: torch.device, method: str) -> str:
    """The factorisation method ``auto`` stands for (others checked and returned)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method == "small" and n > SMALL_LIMIT_N:
        raise ValueError(f"method='small' holds n <= {SMALL_LIMIT_N} in registers, got n = {n}")
    if method != "auto":
        return method
    if n <= SMALL_MAX_N:
        return "small"
    if device.type == "cuda" and not INTERPRETER and n >= CUSOLVER_MIN_N:
        return "cusolver"
    return "blocked"


def _block_n(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def _block_p(p: int) -> int:
    # RHS chunk of the substitution (registers: BLOCK_N × BLOCK_P); no tl.dot, so no 16 minimum
    return _pow2_block(p, 2, 16)


def _shifted_lower(a: Tensor, shift: Tensor) -> Tensor:
    """Contiguous ``tril(a) + shift·I`` (B, n, n) in ``a``'s dtype."""
    w = torch.tril(a).contiguous()
    w.diagonal(dim1=-2, dim2=-1).add_(shift.to(a.dtype)[:, None])
    return w


def _factor_blocked(a: Tensor, shift: Tensor, nb: int) -> tuple[Tensor, Tensor]:
    """Blocked right-looking Cholesky: three launches per block column, no host sync."""
    batch, n = a.shape[0], a.shape[-1]
    w = _shifted_lower(a, shift)
    info = torch.zeros(batch, dtype=torch.int64, device=a.device)
    strides = w.stride()
    for k0 in range(0, n, nb):
        width = min(nb, n - k0)
        _panel_kernel[(batch,)](w, info, k0, width, *strides, NB=nb, num_warps=_BLOCKED_WARPS)
        below = n - k0 - nb
        if below <= 0:
            break
        _panel_trsm_kernel[(batch * triton.cdiv(below, nb),)](
            w, k0, n, *strides, NB=nb, BLOCK_M=nb, num_warps=_BLOCKED_WARPS
        )
        tiles = triton.cdiv(below, nb)
        _trailing_kernel[(batch * tiles * (tiles + 1) // 2,)](
            w, k0, n, *strides, NB=nb, BLOCK_T=nb, num_warps=_BLOCKED_WARPS
        )
    return w, info


def factor(
    a: Tensor, shift: Tensor, *, method: str = "auto", block: int = BLOCKED_NB
) -> tuple[Tensor, Tensor]:
    """``(L (B, n, n), info (B,) int64)``: ``L Lᵀ = a + shift·I`` from ``a``'s lower triangle.

    ``L`` has exact zeros above the diagonal; ``info[b] = j + 1`` (first pivot ``j`` not positive
    and finite, or L_jj² below the smallest normal number) marks a failed member, whose ``L`` is
    garbage. ``block``: the blocked method's
    block width (a power of two >= 16).
    """
    batch, n = a.shape[0], a.shape[-1]
    chosen = _choose(n, a.device, method)
    if chosen == "blocked" and (block < 16 or block & (block - 1)):
        raise ValueError(f"block: expected a power of two >= 16 (tl.dot tiles), got {block}")
    if batch == 0 or n == 0:
        return torch.zeros_like(a), torch.zeros(batch, dtype=torch.int64, device=a.device)
    if chosen == "cusolver":
        lower, info = torch.linalg.cholesky_ex(_shifted_lower(a, shift))
        info = info.long()
    elif chosen == "blocked":
        lower, info = _factor_blocked(a, shift, block)
    else:
        lower = torch.empty((batch, n, n), dtype=a.dtype, device=a.device)
        info = torch.empty(batch, dtype=torch.int64, device=a.device)
        _factor_small[(batch,)](
            a, shift.contiguous(), lower, info, n, *a.stride(), *lower.stride(), BLOCK_N=_block_n(n)
        )
    return lower, mark_tiny_pivots(lower, info)


def solve(lower: Tensor, b: Tensor) -> Tensor:
    """``x (B, n, p)`` with ``L Lᵀ x = b`` for ``lower (B, n, n)`` (lower triangle read).

    Small ``n``: one Triton program per (matrix, column chunk); larger: two triangular solves
    (cuBLAS trsm on CUDA), which beat a Triton substitution there.
    """
    batch, n, p = b.shape
    if batch * n * p == 0:
        return torch.zeros_like(b)
    if n > SMALL_MAX_N:
        y = torch.linalg.solve_triangular(lower, b, upper=False)
        return torch.linalg.solve_triangular(lower.mT, y, upper=True)
    x = torch.empty((batch, n, p), dtype=b.dtype, device=b.device)
    block_p = _block_p(p)
    _solve_small[(batch * triton.cdiv(p, block_p),)](
        lower,
        b,
        x,
        n,
        p,
        *lower.stride(),
        *b.stride(),
        *x.stride(),
        BLOCK_N=_block_n(n),
        BLOCK_P=block_p,
    )
    return x


def ridge(
    k: Tensor, b: Tensor, shift: Tensor, *, method: str = "auto", block: int = BLOCKED_NB
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x (B, n, p), L (B, n, n), info (B,))`` for ``(k + shift·I) x = b``; ``x`` is NaN for
    the members with ``info != 0``. The small method factors and solves in one program."""
    batch, n, p = b.shape
    chosen = _choose(n, k.device, method)
    if chosen != "small" or batch * n == 0:
        lower, info = factor(k, shift, method=chosen, block=block)
        x = solve(lower, b)
        x = torch.where((info == 0)[:, None, None], x, torch.full_like(x, float("nan")))
        return x, lower, info
    x = torch.empty((batch, n, p), dtype=b.dtype, device=b.device)
    lower = torch.empty((batch, n, n), dtype=k.dtype, device=k.device)
    info = torch.empty(batch, dtype=torch.int64, device=k.device)
    _ridge_small[(batch,)](
        k,
        b,
        shift.contiguous(),
        x,
        lower,
        info,
        n,
        p,
        *k.stride(),
        *b.stride(),
        *x.stride(),
        *lower.stride(),
        BLOCK_N=_block_n(n),
        BLOCK_P=_block_p(p),
    )
    info = mark_tiny_pivots(lower, info)
    return torch.where((info == 0)[:, None, None], x, float("nan")), lower, info


def kernel_ridge_batched(
    x: Tensor,
    y: Tensor,
    shift: Tensor,
    kernel: int,
    ell: Tensor,
    x_new: Tensor | None,
    *,
    method: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(alpha (B, n, p), pred (B, m, p) or None, info (B,))`` of kernel ridge regressions.

    ``x (B, n, d)``, ``y (B, n, p)``, ``shift (B,)`` float64, ``kernel`` an id of
    :mod:`fastamort.ops.kernel_math`, ``ell`` 0-d, ``x_new (B, m, d)`` or None. ``method``:
    ``"auto"`` (fused up to ``FUSED_MAX_N``), ``"fused"`` (up to ``SMALL_LIMIT_N``) or
    ``"composed"`` (gram → :func:`ridge` → gram_matmul). Failed members get NaN outputs.
    """
    if method not in ("auto", "fused", "composed"):
        raise ValueError(f"method: expected 'auto', 'fused' or 'composed', got {method!r}")
    batch, n, d = x.shape
    p = y.shape[-1]
    fused = method == "fused" or (method == "auto" and n <= FUSED_MAX_N)
    if fused and n > SMALL_LIMIT_N:
        raise ValueError(f"method='fused' holds n <= {SMALL_LIMIT_N} in registers, got n = {n}")
    if not fused or batch * n == 0:
        kmat = gram_forward(x, None, kernel, ell)
        alpha, _, info = ridge(kmat, y, shift)
        pred = None if x_new is None else gram_matmul_forward(x_new, x, alpha, kernel, ell)
        return alpha, pred, info

    has_new = x_new is not None
    m = x_new.shape[1] if has_new else 0
    # Jointly centred points (x_new and x share the centre, so K(x, x) and K(x_new, x) are
    # computed consistently) and their squared norms; the Laplacian gets placeholders.
    if has_new:
        q, xc, nq, nx = _prepare(x_new, x, kernel)
    else:
        xc, _, nx, _ = _prepare(x, None, kernel)
        q, nq = xc, nx
    y = y.contiguous()
    ell = ell.contiguous()
    alpha = torch.empty((batch, n, p), dtype=x.dtype, device=x.device)
    pred = torch.empty((batch, m, p), dtype=x.dtype, device=x.device) if has_new else None
    info = torch.empty(batch, dtype=torch.int64, device=x.device)
    pred_arg = pred if has_new else alpha
    if kernel == KERNEL_IDS["laplacian"]:
        block_k = _pow2_block(d, 4, 8)  # last axis of [BLOCK_N, BLOCK_N, BLOCK_K] |x − y| tiles
    else:
        block_k = _pow2_block(d, 16, 32)  # K axis of tl.dot (>= 16)
    _krr_fused[(batch,)](
        xc,
        nx,
        q,
        nq,
        y,
        shift.contiguous(),
        ell,
        alpha,
        pred_arg,
        info,
        n,
        m,
        d,
        p,
        *xc.stride(),
        *q.stride(),
        _norm_stride(nx),
        _norm_stride(nq),
        *y.stride(),
        *alpha.stride(),
        *pred_arg.stride(),
        KERNEL=kernel,
        HAS_NEW=has_new,
        BLOCK_N=max(16, _block_n(n)),  # tl.dot dimensions must be >= 16
        BLOCK_M=16 if m <= 16 else 32,
        BLOCK_K=block_k,
        BLOCK_P=_pow2_block(p, 16, 32),
    )
    return alpha, pred, info
