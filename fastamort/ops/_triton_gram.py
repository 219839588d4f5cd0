"""Triton kernels and launchers for stationary-kernel Gram matrices.

Three launchers, all on 3-D batched float32 / float64 tensors (validated by the caller):

* :func:`gram_forward`: ``K[b, i, j] = k(s(x_i, y_j))`` (``y=None``: exactly symmetric, unit
  diagonal);
* :func:`gram_matmul_forward`: ``K(x, y) @ v`` without ever storing ``K``;
* :func:`gram_backward`: gradients of ``sum(G * K(x, y))`` with respect to ``x``, ``y`` and ``ℓ``,
  with ``G`` given, or ``G = grad @ vᵀ`` built tile by tile.

The kernel math (``s``, ``k(s)``, ``dk/ds``, the integer ids) is the one of
:mod:`fastamort.ops.kernel_math`. Euclidean kernels get ``‖x − y‖²`` by the GEMM trick on data
centred at a robust centre (``‖x̃‖² + ‖ỹ‖² − 2 x̃·ỹ``, norms from the launcher); a tile with entries
whose centred norms exceed ``DIRECT_RATIO`` times their value recomputes those from the raw points
by direct differences (and the backward contracts their ``w·(x − y)`` directly), so no offset or
outlier costs digits. The Laplacian uses direct ``|x − y|`` sums of the raw points.
Accumulation is in the input dtype (fp32 or fp64); ``tl.dot`` always runs with
``input_precision="ieee"`` (no TF32). ``ℓ`` is read from device memory inside the kernels, so no
launcher synchronises with the host.

Under ``TRITON_INTERPRET=1`` every autotuned kernel gets exactly one config: the interpreter cannot
benchmark two or more ("0 active drivers").
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gram import robust_centre
from .kernel_math import DIRECT_RATIO, KERNEL_IDS, KERNEL_NAMES, lengthscale_factor_from_k

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

_LAPLACIAN_ID = KERNEL_IDS["laplacian"]
_LAPLACIAN = tl.constexpr(_LAPLACIAN_ID)
_DIRECT_RATIO = tl.constexpr(DIRECT_RATIO)


# --------------------------------------------------------------------------------------------
# Autotune configurations
# --------------------------------------------------------------------------------------------


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages
    )


_INTERPRETER_CONFIGS = [_cfg(32, 32, 16, 4, 1)]

# Forward Gram tiles must be square (the symmetric launch stores each tile and its transpose).
_GRAM_CONFIGS = {
    "euclid": [
        _cfg(64, 64, 16, 4, 2),
        _cfg(64, 64, 32, 4, 3),
        _cfg(128, 128, 16, 8, 2),
        _cfg(128, 128, 32, 8, 3),
    ],
    # The Laplacian builds [BLOCK_M, BLOCK_N, BLOCK_K] broadcast tiles: keep them small.
    "l1": [
        _cfg(32, 32, 8, 4, 2),
        _cfg(32, 32, 16, 8, 2),
        _cfg(64, 64, 8, 8, 2),
    ],
}
# The last two Euclidean configs of the matmul and backward tables (and the last Laplacian
# backward one) are the ones the offline sm_90 compile (tests/triton_offline.py) finds free of
# register spills where the others spill: float64 and the Matérn epilogues (matmul), every
# backward (the others spill 30–120 B per thread in float32, 0.2–1.6 KB in float64). The
# autotuner decides on the GPU.
# float64 Euclidean products get only the smaller tiles: with the direct recomputation, the
# larger ones need 384–768 KiB of shared memory in the Matérn epilogues (sm_90 allows 227 KiB).
# The last config of each Euclidean table is the one the offline compile finds free of register
# spills in the Matérn-5/2 epilogue (float32: 32×32×32, 4 warps; float64: 32×32×16, 8 warps).
_MATMUL_CONFIGS = {
    "euclid": [
        _cfg(64, 64, 32, 4, 3),
        _cfg(128, 64, 32, 8, 3),
        _cfg(64, 128, 32, 4, 2),
        _cfg(128, 128, 16, 8, 2),
        _cfg(64, 32, 32, 4, 2),
        _cfg(64, 64, 32, 8, 2),
        _cfg(32, 32, 32, 4, 2),
    ],
    "euclid64": [
        _cfg(64, 64, 32, 4, 3),
        _cfg(64, 32, 32, 4, 2),
        _cfg(64, 64, 32, 8, 2),
        _cfg(32, 32, 32, 4, 2),
        _cfg(32, 32, 16, 8, 2),
    ],
    "l1": [
        _cfg(32, 32, 8, 4, 2),
        _cfg(64, 32, 8, 4, 2),
        _cfg(64, 64, 8, 8, 2),
    ],
}
_BACKWARD_CONFIGS = {
    "euclid": [
        _cfg(64, 64, 16, 4, 3),
        _cfg(64, 64, 32, 4, 2),
        _cfg(128, 64, 32, 8, 2),
        _cfg(64, 128, 32, 8, 2),
        _cfg(32, 32, 32, 4, 2),
        _cfg(64, 64, 32, 8, 2),
    ],
    "l1": [
        _cfg(32, 32, 8, 4, 2),
        _cfg(64, 32, 8, 4, 2),
        _cfg(32, 64, 8, 8, 2),
        _cfg(16, 32, 8, 4, 2),  # float64 Laplacian backward: the only one that does not spill
    ],
}


def _configs(table: dict[str, list[triton.Config]], family: str) -> list[triton.Config]:
    return _INTERPRETER_CONFIGS if INTERPRETER else table[family]


def _tuned(fn: Callable, table: dict[str, list[triton.Config]], key: list[str], **kwargs) -> dict:
    """One autotuned wrapper of ``fn`` per kernel family (Euclidean, Laplacian); ``kwargs`` go to
    :func:`triton.autotune` (``reset_to_zero``)."""
    return {
        family: triton.autotune(configs=_configs(table, family), key=key, **kwargs)(fn)
        for family in table
    }


def _family(kernel: int) -> str:
    return "l1" if kernel == _LAPLACIAN_ID else "euclid"


def _matmul_family(kernel: int, dtype: torch.dtype) -> str:
    """:func:`_family`, with float64 Euclidean products on their own (smaller) tiles."""
    family = _family(kernel)
    return "euclid64" if family == "euclid" and dtype == torch.float64 else family


def _min_block(configs: list[triton.Config], name: str) -> int:
    return min(c.kwargs[name] for c in configs)


def _pow2_block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _unflatten(pid, n_fast, n_mid):
    """``(fast, mid, slow)`` indices of ``pid = (slow * n_mid + mid) * n_fast + fast``.

    All grids are 1-D (axis 0 allows 2³¹ − 1 programs, axes 1 and 2 only 65535)."""
    fast = pid % n_fast
    rest = pid // n_fast
    return fast, rest % n_mid, rest // n_mid


@triton.jit
def _tri_index(pid):
    """Lower-triangle tile ``(tm, tn)``, ``tm >= tn``, of the linear index ``pid``."""
    tm = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    tm = tl.where(tm * (tm + 1) // 2 > pid, tm - 1, tm)
    tm = tl.where((tm + 1) * (tm + 2) // 2 <= pid, tm + 1, tm)
    tn = pid - tm * (tm + 1) // 2
    return tm, tn


@triton.jit
def _s_tile_exact(
    a_base,
    c_base,
    ar_base,
    cr_base,
    na_base,
    nc_base,
    offs_a,
    offs_c,
    mask_a,
    mask_c,
    stride_am,
    stride_ad,
    stride_cm,
    stride_cd,
    D,
    ell,
    KERNEL: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Scaled distances ``s[BLOCK_A, BLOCK_C]`` between rows ``a`` and rows ``c`` (s = 0 on i == j
    when ``SYMMETRIC``), and the mask of the entries where the GEMM trick may have lost digits;
    a tile with any of them is made by direct differences of the raw rows ``ar``, ``cr`` (same
    strides as ``a``, ``c``). Rows outside the masks read as zeros: their ``s`` is finite, not 0."""
    dtype = a_base.dtype.element_ty
    a_rows = a_base + offs_a.to(tl.int64) * stride_am
    c_rows = c_base + offs_c.to(tl.int64) * stride_cm
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_A, BLOCK_C), dtype=dtype)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < D
        a = tl.load(
            a_rows[:, None] + kk[None, :] * stride_ad,
            mask=mask_a[:, None] & mask_k[None, :],
            other=0.0,
        )
        if KERNEL == _LAPLACIAN:
            c = tl.load(
                c_rows[:, None] + kk[None, :] * stride_cd,
                mask=mask_c[:, None] & mask_k[None, :],
                other=0.0,
            )
            acc += tl.sum(tl.abs(a[:, None, :] - c[None, :, :]), axis=2)
        else:
            c_t = tl.load(
                c_rows[None, :] + kk[:, None] * stride_cd,
                mask=mask_k[:, None] & mask_c[None, :],
                other=0.0,
            )
            acc = tl.dot(a, c_t, acc, input_precision="ieee")
    valid = mask_a[:, None] & mask_c[None, :]
    if KERNEL == _LAPLACIAN:
        s = acc / ell
        redo = tl.zeros((BLOCK_A, BLOCK_C), dtype=tl.int1)
    else:
        na = tl.load(na_base + offs_a, mask=mask_a, other=0.0)
        nc = tl.load(nc_base + offs_c, mask=mask_c, other=0.0)
        e = na[:, None] + nc[None, :]
        q = e - 2.0 * acc
        redo = valid & (e > _DIRECT_RATIO * q)
        if SYMMETRIC:  # a point against itself: s = 0 below, nothing to recompute
            redo = redo & (offs_a[:, None] != offs_c[None, :])
        if tl.max(redo.to(tl.int32)) > 0:
            # the whole tile by direct differences (nothing of the GEMM trick stays live)
            ar_rows = ar_base + offs_a.to(tl.int64) * stride_am
            cr_rows = cr_base + offs_c.to(tl.int64) * stride_cm
            q = tl.zeros((BLOCK_A, BLOCK_C), dtype=dtype)
            for k in range(0, D):
                a_k = tl.load(ar_rows + k * stride_ad, mask=mask_a, other=0.0)
                c_k = tl.load(cr_rows + k * stride_cd, mask=mask_c, other=0.0)
                diff = a_k[:, None] - c_k[None, :]
                q += diff * diff
        s = tl.maximum(q, 0.0) / (ell * ell)
    if SYMMETRIC:
        s = tl.where(offs_a[:, None] == offs_c[None, :], 0.0, s)
    return tl.minimum(s, 1e7), redo  # kernel_math.S_MAX: k = 0 beyond, and no (1 + ∞)·0


@triton.jit
def _s_tile_direct(
    a_base,
    c_base,
    offs_a,
    offs_c,
    mask_a,
    mask_c,
    stride_am,
    stride_ad,
    stride_cm,
    stride_cd,
    D,
    ell,
    KERNEL: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Scaled distances ``s[BLOCK_A, BLOCK_C]`` by direct differences, one dimension at a time:
    as accurate as the points allow, whatever their offset, and with no second tile held live
    (small tiles: the fused kernel ridge, where the GEMM trick plus its recomputation spills
    registers). s = 0 on i == j when ``SYMMETRIC``."""
    dtype = a_base.dtype.element_ty
    a_rows = a_base + offs_a.to(tl.int64) * stride_am
    c_rows = c_base + offs_c.to(tl.int64) * stride_cm
    acc = tl.zeros((BLOCK_A, BLOCK_C), dtype=dtype)
    for k in range(0, D):
        a_k = tl.load(a_rows + k * stride_ad, mask=mask_a, other=0.0)
        c_k = tl.load(c_rows + k * stride_cd, mask=mask_c, other=0.0)
        diff = a_k[:, None] - c_k[None, :]
        if KERNEL == _LAPLACIAN:
            acc += tl.abs(diff)
        else:
            acc += diff * diff
    if KERNEL == _LAPLACIAN:
        s = acc / ell
    else:
        s = acc / (ell * ell)
    if SYMMETRIC:
        s = tl.where(offs_a[:, None] == offs_c[None, :], 0.0, s)
    return tl.minimum(s, 1e7)  # kernel_math.S_MAX


@triton.jit
def _k_of_s(s, KERNEL: tl.constexpr):
    """k(s) elementwise (ids of :mod:`fastamort.ops.kernel_math`)."""
    if KERNEL == 0:
        k = tl.exp(-0.5 * s)
    elif KERNEL == 1:
        k = tl.exp(-tl.sqrt(s))
    elif KERNEL == 2:
        a = tl.sqrt(3.0 * s)
        k = (1.0 + a) * tl.exp(-a)
    elif KERNEL == 3:
        a = tl.sqrt(5.0 * s)
        k = (1.0 + a + (5.0 / 3.0) * s) * tl.exp(-a)
    else:
        k = tl.exp(-s)
    return k


@triton.jit
def _dk_of_s(s, KERNEL: tl.constexpr):
    """dk/ds elementwise; 0 at s = 0 for matern12 (where k is not differentiable)."""
    if KERNEL == 0:
        dk = -0.5 * tl.exp(-0.5 * s)
    elif KERNEL == 1:
        positive = s > 0
        r = tl.sqrt(tl.where(positive, s, 1.0))
        dk = tl.where(positive, -0.5 * tl.exp(-r) / r, 0.0)
    elif KERNEL == 2:
        dk = -1.5 * tl.exp(-tl.sqrt(3.0 * s))
    elif KERNEL == 3:
        a = tl.sqrt(5.0 * s)
        dk = -(5.0 / 6.0) * (1.0 + a) * tl.exp(-a)
    else:
        dk = -tl.exp(-s)
    return dk


@triton.jit
def _g_tile(
    u_base,
    w_base,
    offs_a,
    offs_c,
    mask_a,
    mask_c,
    stride_u1,
    stride_u2,
    stride_w1,
    stride_w2,
    P,
    HAS_V: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Upstream-gradient tile ``G[BLOCK_A, BLOCK_C]`` (zero outside the masks).

    ``HAS_V``: ``G = U Wᵀ`` with ``U[a, p]``, ``W[c, p]``, reduced over ``P`` in ``BLOCK_P`` chunks;
    otherwise ``G[a, c] = U[a, c]`` read directly (strides ``stride_u1``, ``stride_u2``).
    """
    ra = offs_a.to(tl.int64)
    rc = offs_c.to(tl.int64)
    if HAS_V:
        offs_p = tl.arange(0, BLOCK_P)
        g = tl.zeros((BLOCK_A, BLOCK_C), dtype=u_base.dtype.element_ty)
        for p0 in range(0, P, BLOCK_P):
            pp = p0 + offs_p
            mask_p = pp < P
            u = tl.load(
                u_base + ra[:, None] * stride_u1 + pp[None, :] * stride_u2,
                mask=mask_a[:, None] & mask_p[None, :],
                other=0.0,
            )
            w_t = tl.load(
                w_base + rc[None, :] * stride_w1 + pp[:, None] * stride_w2,
                mask=mask_p[:, None] & mask_c[None, :],
                other=0.0,
            )
            g = tl.dot(u, w_t, g, input_precision="ieee")
    else:
        g = tl.load(
            u_base + ra[:, None] * stride_u1 + rc[None, :] * stride_u2,
            mask=mask_a[:, None] & mask_c[None, :],
            other=0.0,
        )
    return g


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _gram_fwd_kernel(
    x_ptr,
    y_ptr,
    xr_ptr,
    yr_ptr,
    nx_ptr,
    ny_ptr,
    ell_ptr,
    out_ptr,
    M,
    N,
    D,
    # x (B, M, D)
    stride_xb,
    stride_xm,
    stride_xd,
    # y (B, N, D)
    stride_yb,
    stride_yn,
    stride_yd,
    # squared norms nx (B, M), ny (B, N), contiguous rows
    stride_nxb,
    stride_nyb,
    # out (B, M, N)
    stride_ob,
    stride_om,
    stride_on,
    KERNEL: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` tile of ``K(x, y)`` per program (1-D grid: tiles × batch).

    ``SYMMETRIC`` (y is x): programs cover only tiles ``tm >= tn`` and store each tile and its
    transpose, so ``K`` is exactly symmetric; ``s = 0`` on ``i == j`` makes the diagonal exactly 1.
    """
    tl.static_assert((not SYMMETRIC) or (BLOCK_M == BLOCK_N))
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    if SYMMETRIC:
        tile, _, pid_b = _unflatten(pid, num_m * (num_m + 1) // 2, 1)
        tm, tn = _tri_index(tile)
    else:
        tn, tm, pid_b = _unflatten(pid, tl.cdiv(N, BLOCK_N), num_m)
    pid_b = pid_b.to(tl.int64)
    offs_m = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ell = tl.load(ell_ptr)

    s, _ = _s_tile_exact(
        x_ptr + pid_b * stride_xb,
        y_ptr + pid_b * stride_yb,
        xr_ptr + pid_b * stride_xb,
        yr_ptr + pid_b * stride_yb,
        nx_ptr + pid_b * stride_nxb,
        ny_ptr + pid_b * stride_nyb,
        offs_m,
        offs_n,
        mask_m,
        mask_n,
        stride_xm,
        stride_xd,
        stride_yn,
        stride_yd,
        D,
        ell,
        KERNEL,
        SYMMETRIC,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    k = _k_of_s(s, KERNEL)

    # output tile pointers (int64 row/column offsets)
    out_base = out_ptr + pid_b * stride_ob
    rm = offs_m.to(tl.int64)
    rn = offs_n.to(tl.int64)
    mask = mask_m[:, None] & mask_n[None, :]
    if SYMMETRIC:
        # Diagonal tile: (i, j) from the lower half, (j, i) from its transpose (strictly lower).
        lower = offs_m[:, None] >= offs_n[None, :]
        tl.store(out_base + rm[:, None] * stride_om + rn[None, :] * stride_on, k, mask=mask & lower)
        mask_t = mask_n[:, None] & mask_m[None, :] & (offs_n[:, None] < offs_m[None, :])
        tl.store(
            out_base + rn[:, None] * stride_om + rm[None, :] * stride_on,
            tl.trans(k),
            mask=mask_t,
        )
    else:
        tl.store(out_base + rm[:, None] * stride_om + rn[None, :] * stride_on, k, mask=mask)


@triton.jit
def _gram_matmul_kernel(
    x_ptr,
    y_ptr,
    xr_ptr,
    yr_ptr,
    nx_ptr,
    ny_ptr,
    v_ptr,
    ell_ptr,
    out_ptr,
    M,
    N,
    D,
    P,
    # x (B, M, D)
    stride_xb,
    stride_xm,
    stride_xd,
    # y (B, N, D)
    stride_yb,
    stride_yn,
    stride_yd,
    # squared norms nx (B, M), ny (B, N), contiguous rows
    stride_nxb,
    stride_nyb,
    # v (B, N, P)
    stride_vb,
    stride_vn,
    stride_vp,
    # out (B, M, P)
    stride_ob,
    stride_om,
    stride_op,
    KERNEL: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``out[BLOCK_M, BLOCK_P] = K(x_rows, y) @ v[:, p-block]``; loops over ``N`` in ``BLOCK_N``
    chunks, the ``K`` tile lives only in registers (1-D grid: row blocks × P blocks × batch)."""
    pid_m, pid_p, pid_b = _unflatten(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(P, BLOCK_P))
    pid_b = pid_b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_m = offs_m < M
    mask_p = offs_p < P
    ell = tl.load(ell_ptr)

    # per-batch bases
    x_base = x_ptr + pid_b * stride_xb
    y_base = y_ptr + pid_b * stride_yb
    xr_base = xr_ptr + pid_b * stride_xb
    yr_base = yr_ptr + pid_b * stride_yb
    nx_base = nx_ptr + pid_b * stride_nxb
    ny_base = ny_ptr + pid_b * stride_nyb
    v_base = v_ptr + pid_b * stride_vb

    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=x_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s, _ = _s_tile_exact(
            x_base,
            y_base,
            xr_base,
            yr_base,
            nx_base,
            ny_base,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            stride_xm,
            stride_xd,
            stride_yn,
            stride_yd,
            D,
            ell,
            KERNEL,
            SYMMETRIC,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        k = tl.where(mask_n[None, :], _k_of_s(s, KERNEL), 0.0)
        v = tl.load(
            v_base + offs_n.to(tl.int64)[:, None] * stride_vn + offs_p[None, :] * stride_vp,
            mask=mask_n[:, None] & mask_p[None, :],
            other=0.0,
        )
        acc = tl.dot(k, v, acc, input_precision="ieee")

    # out (B, M, P)
    out = out_ptr + pid_b * stride_ob
    out += offs_m.to(tl.int64)[:, None] * stride_om + offs_p[None, :] * stride_op
    tl.store(out, acc, mask=mask_m[:, None] & mask_p[None, :])


@triton.jit
def _gram_bwd_kernel(
    a_ptr,
    c_ptr,
    ar_ptr,
    cr_ptr,
    na_ptr,
    nc_ptr,
    u_ptr,
    w_ptr,
    ell_ptr,
    da_ptr,
    dell_ptr,
    MA,
    MC,
    D,
    P,
    # a (B, MA, D): the rows whose gradient this launch computes (centred; ar raw, same strides)
    stride_ab,
    stride_am,
    stride_ad,
    # c (B, MC, D): the other side (centred; cr raw, same strides)
    stride_cb,
    stride_cm,
    stride_cd,
    # squared norms na (B, MA), nc (B, MC), contiguous rows
    stride_nab,
    stride_ncb,
    # u: G itself (B, MA, MC) or, with HAS_V, the row factor (B, MA, P)
    stride_ub,
    stride_u1,
    stride_u2,
    # w: with HAS_V, the column factor (B, MC, P): G = u @ wᵀ
    stride_wb,
    stride_w1,
    stride_w2,
    # da (B, MA, D)
    stride_dab,
    stride_dam,
    stride_dad,
    # dell partial sums (B, n_slots): one slot per row block
    stride_dellb,
    KERNEL: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    HAS_V: tl.constexpr,
    NEED_DA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Row-side gradient of ``L = Σ G ⊙ K(a, c)``: ``da`` for ``BLOCK_M`` rows of ``a`` and a
    ``BLOCK_D`` block of coordinates, looping over ``c`` in ``BLOCK_N`` chunks (1-D grid: row
    blocks × D blocks × batch). ``s`` and ``w = G · dk/ds`` are recomputed per tile, never stored.

    The column-side gradient is the same kernel with the roles of the two sides swapped (``G``
    transposed through its strides, or ``u``/``w`` exchanged). Programs of D block 0 also write
    their partial ``dL/dℓ``; without ``NEED_DA`` that is all they do (one D block).
    """
    if NEED_DA:
        n_dblocks = tl.cdiv(D, BLOCK_D)
    else:
        n_dblocks = 1
    pid_m, pid_d, pid_b = _unflatten(tl.program_id(0), tl.cdiv(MA, BLOCK_M), n_dblocks)
    pid_b = pid_b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < MA
    mask_d = offs_d < D
    ell = tl.load(ell_ptr)

    # per-batch bases
    a_base = a_ptr + pid_b * stride_ab
    c_base = c_ptr + pid_b * stride_cb
    ar_base = ar_ptr + pid_b * stride_ab
    cr_base = cr_ptr + pid_b * stride_cb
    na_base = na_ptr + pid_b * stride_nab
    nc_base = nc_ptr + pid_b * stride_ncb
    u_base = u_ptr + pid_b * stride_ub
    w_base = w_ptr + pid_b * stride_wb

    dtype = a_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=dtype)
    row_w = tl.zeros((BLOCK_M,), dtype=dtype)
    row_ws = tl.zeros((BLOCK_M,), dtype=dtype)
    if NEED_DA:
        # this program's rows of a, restricted to its D block
        a_blk = tl.load(
            a_base + offs_m.to(tl.int64)[:, None] * stride_am + offs_d[None, :] * stride_ad,
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )
    for n0 in range(0, MC, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < MC
        s, redo = _s_tile_exact(
            a_base,
            c_base,
            ar_base,
            cr_base,
            na_base,
            nc_base,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            stride_am,
            stride_ad,
            stride_cm,
            stride_cd,
            D,
            ell,
            KERNEL,
            SYMMETRIC,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        g = _g_tile(
            u_base,
            w_base,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            stride_u1,
            stride_u2,
            stride_w1,
            stride_w2,
            P,
            HAS_V,
            BLOCK_M,
            BLOCK_N,
            BLOCK_P,
        )
        w = tl.where(mask_m[:, None] & mask_n[None, :], g * _dk_of_s(s, KERNEL), 0.0)
        if SYMMETRIC:
            w = tl.where(offs_m[:, None] == offs_n[None, :], 0.0, w)
        row_ws += tl.sum(w * s, axis=1)
        if NEED_DA:
            c_blk = tl.load(
                c_base + offs_n.to(tl.int64)[:, None] * stride_cm + offs_d[None, :] * stride_cd,
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )
            if KERNEL == _LAPLACIAN:
                diff = a_blk[:, None, :] - c_blk[None, :, :]
                sign = (diff > 0).to(dtype) - (diff < 0).to(dtype)
                acc += tl.sum(w[:, :, None] * sign, axis=1)
            else:
                w_gemm = tl.where(redo, 0.0, w)
                row_w += tl.sum(w_gemm, axis=1)
                acc = tl.dot(w_gemm, c_blk, acc, input_precision="ieee")
                if tl.max(redo.to(tl.int32)) > 0:
                    # w·(a − c) of the recomputed entries from the raw points, coordinate by
                    # coordinate (the GEMM form (Σ w)·ã − Σ w·c̃ would cancel their digits),
                    # summed in da itself: this program owns those entries, and the rare case
                    # holds no registers through the loop
                    w_exact = tl.where(redo, w, 0.0)
                    ar_rows = ar_base + offs_m.to(tl.int64) * stride_am
                    cr_rows = cr_base + offs_n.to(tl.int64) * stride_cm
                    da_rows = da_ptr + pid_b * stride_dab + offs_m.to(tl.int64) * stride_dam
                    for dd in range(0, BLOCK_D):
                        col = pid_d * BLOCK_D + dd
                        inside = mask_m & ((offs_m * 0 + col) < D)
                        read = tl.minimum(col, D - 1)
                        a_k = tl.load(ar_rows + read * stride_ad, mask=mask_m, other=0.0)
                        c_k = tl.load(cr_rows + read * stride_cd, mask=mask_n, other=0.0)
                        part = tl.sum(w_exact * (a_k[:, None] - c_k[None, :]), axis=1)
                        sofar = tl.load(da_rows + col * stride_dad, mask=inside, other=0.0)
                        tl.store(da_rows + col * stride_dad, sofar + part, mask=inside)

    if KERNEL == _LAPLACIAN:
        dell = -tl.sum(row_ws, axis=0) / ell
    else:
        dell = -2.0 * tl.sum(row_ws, axis=0) / ell
    if NEED_DA:
        # da (B, MA, D): zeros on entry, or (Euclidean) the direct sums of recomputed entries
        da_out = da_ptr + pid_b * stride_dab
        da_out += offs_m.to(tl.int64)[:, None] * stride_dam + offs_d[None, :] * stride_dad
        if KERNEL == _LAPLACIAN:
            da = acc / ell
        else:
            exact = tl.load(da_out, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            da = (2.0 / (ell * ell)) * (row_w[:, None] * a_blk - acc + exact)
        tl.store(da_out, da, mask=mask_m[:, None] & mask_d[None, :])
    if pid_d == 0:
        tl.store(dell_ptr + pid_b * stride_dellb + pid_m, dell)


_gram_fwd = _tuned(_gram_fwd_kernel, _GRAM_CONFIGS, key=["M", "N", "D", "KERNEL", "SYMMETRIC"])
_gram_matmul = _tuned(
    _gram_matmul_kernel, _MATMUL_CONFIGS, key=["M", "N", "D", "P", "KERNEL", "SYMMETRIC"]
)
# Autotuning runs every config on the same buffers: the dℓ slots a config with more row blocks
# wrote would otherwise stay in the sum after the chosen config's run, and da accumulates the
# direct part of recomputed entries (GPU only: the interpreter has one config), so both are
# zeroed before each run.
_gram_bwd = _tuned(
    _gram_bwd_kernel,
    _BACKWARD_CONFIGS,
    key=["MA", "MC", "D", "P", "KERNEL", "SYMMETRIC", "HAS_V", "NEED_DA"],
    reset_to_zero=["dell_ptr", "da_ptr"],
)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _prepare_exact(
    x: Tensor, y: Tensor | None, kernel: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, x̃, ỹ, ‖x̃‖², ‖ỹ‖²)``: the raw points, contiguous, and (Euclidean kernels) the
    points centred at :func:`robust_centre` with their squared norms.

    ``y=None`` returns ``x`` as ``y``. The Laplacian needs neither: the raw points stand in for
    the centred ones and for the norms (the kernels never read them).
    """
    x = x.contiguous()
    y = x if y is None else y.contiguous()
    if kernel == _LAPLACIAN_ID:
        return x, y, x, y, x, y
    centre = robust_centre(x, None if y is x else y)
    xc = (x - centre).contiguous()
    yc = xc if y is x else (y - centre).contiguous()
    nx = (xc * xc).sum(-1).contiguous()
    ny = nx if y is x else (yc * yc).sum(-1).contiguous()
    return x, y, xc, yc, nx, ny


def _prepare(x: Tensor, y: Tensor | None, kernel: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x̃, ỹ, ‖x̃‖², ‖ỹ‖²)`` of :func:`_prepare_exact`, for the fused kernel ridge."""
    return _prepare_exact(x, y, kernel)[2:]


def _norm_stride(n: Tensor) -> int:
    """Batch stride of a (B, M) norm vector; 0 for the Laplacian's placeholder."""
    return n.stride(0) if n.dim() == 2 else 0


def gram_forward(x: Tensor, y: Tensor | None, kernel: int, ell: Tensor) -> Tensor:
    """Gram matrix ``K (B, M, N)`` of ``x (B, M, D)`` and ``y (B, N, D)`` (``None``: ``y = x``).

    ``ell`` is a 0-d tensor (same dtype and device), ``> 0``. With ``y=None`` the result is exactly
    symmetric with exactly 1.0 on the diagonal.
    """
    symmetric = y is None
    B, M, D = x.shape
    N = M if y is None else y.shape[1]
    out = torch.empty((B, M, N), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    xr, yr, xc, yc, nx, ny = _prepare_exact(x, y, kernel)
    ell = ell.contiguous()

    def grid(meta: dict) -> tuple[int]:
        tm = triton.cdiv(M, meta["BLOCK_M"])
        if symmetric:
            return (B * (tm * (tm + 1) // 2),)
        return (B * tm * triton.cdiv(N, meta["BLOCK_N"]),)

    _gram_fwd[_family(kernel)][grid](
        xc,
        yc,
        xr,
        yr,
        nx,
        ny,
        ell,
        out,
        M,
        N,
        D,
        *xc.stride(),
        *yc.stride(),
        _norm_stride(nx),
        _norm_stride(ny),
        *out.stride(),
        KERNEL=kernel,
        SYMMETRIC=symmetric,
    )
    return out


def gram_matmul_forward(x: Tensor, y: Tensor | None, v: Tensor, kernel: int, ell: Tensor) -> Tensor:
    """``out (B, M, P) = K(x, y) @ v`` with ``v (B, N, P)``, never storing the ``(M, N)`` matrix.

    ``x (B, M, D)``, ``y (B, N, D)`` or ``None`` (``y = x``, unit diagonal), ``ell`` 0-d, ``> 0``.
    """
    symmetric = y is None
    B, M, D = x.shape
    N, P = v.shape[1], v.shape[2]
    if M == 0 or P == 0 or N == 0:
        return torch.zeros((B, M, P), dtype=x.dtype, device=x.device)
    out = torch.empty((B, M, P), dtype=x.dtype, device=x.device)
    xr, yr, xc, yc, nx, ny = _prepare_exact(x, y, kernel)
    v = v.contiguous()
    ell = ell.contiguous()
    block_p = _pow2_block(P, 16, 64)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(P, block_p) * B,)

    _gram_matmul[_matmul_family(kernel, x.dtype)][grid](
        xc,
        yc,
        xr,
        yr,
        nx,
        ny,
        v,
        ell,
        out,
        M,
        N,
        D,
        P,
        *xc.stride(),
        *yc.stride(),
        _norm_stride(nx),
        _norm_stride(ny),
        *v.stride(),
        *out.stride(),
        KERNEL=kernel,
        SYMMETRIC=symmetric,
        BLOCK_P=block_p,
    )
    return out


def _side_grad(
    a: Tensor,
    c: Tensor,
    a_raw: Tensor,
    c_raw: Tensor,
    na: Tensor,
    nc: Tensor,
    u: Tensor,
    u_strides: tuple[int, int, int],
    w: Tensor,
    ell: Tensor,
    kernel: int,
    symmetric: bool,
    has_v: bool,
    need_da: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """One launch of the backward kernel: ``(da (B, MA, D) or None without need_da, dell
    partial sums (B, slots))``."""
    B, MA, D = a.shape
    MC = c.shape[1]
    P = u.shape[2] if has_v else 0
    family = _family(kernel)
    # one dℓ slot per row block of the smallest BLOCK_M the autotuner may launch with
    slots = triton.cdiv(MA, _min_block(_gram_bwd[family].configs, "BLOCK_M"))
    da = torch.zeros_like(a) if need_da else a  # not written without need_da
    dell = torch.zeros((B, slots), dtype=a.dtype, device=a.device)
    if kernel == _LAPLACIAN_ID:
        block_d = _pow2_block(D, 4, 16)  # last axis of [BLOCK_M, BLOCK_N, BLOCK_D] sign tiles
    else:
        block_d = _pow2_block(D, 16, 64)  # N axis of tl.dot(w, c_block)
    block_p = _pow2_block(P, 16, 32)
    d_blocks = triton.cdiv(D, block_d) if need_da else 1

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(MA, meta["BLOCK_M"]) * d_blocks * B,)

    _gram_bwd[family][grid](
        a,
        c,
        a_raw,
        c_raw,
        na,
        nc,
        u,
        w,
        ell,
        da,
        dell,
        MA,
        MC,
        D,
        P,
        *a.stride(),
        *c.stride(),
        _norm_stride(na),
        _norm_stride(nc),
        *u_strides,
        *w.stride(),
        *da.stride(),
        dell.stride(0),
        KERNEL=kernel,
        SYMMETRIC=symmetric,
        HAS_V=has_v,
        NEED_DA=need_da,
        BLOCK_D=block_d,
        BLOCK_P=block_p,
    )
    return (da if need_da else None), dell


def gram_backward(
    x: Tensor,
    y: Tensor | None,
    grad: Tensor,
    v: Tensor | None,
    kernel: int,
    ell: Tensor,
    need_x: bool = True,
    need_y: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Gradients of ``L = sum(G * K(x, y))`` with respect to ``x``, ``y`` and ``ℓ``.

    ``G = grad (B, M, N)`` when ``v`` is None, else ``G = grad (B, M, P) @ v (B, N, P)ᵀ``, built
    in tiles and never stored. Returns ``(dx (B, M, D), dy (B, N, D), dell (0-d, summed over the
    batch))``; ``dx`` is None without ``need_x``, ``dy`` None without ``need_y`` or when y is
    None. With ``y=None`` ``dx`` is the total gradient of ``x`` in both roles; the (constant)
    diagonal contributes nothing. With no point gradient asked for, one launch forms ``dℓ``
    and contracts nothing with the points.
    """
    symmetric = y is None
    has_v = v is not None
    need_y = need_y and not symmetric
    B, M, D = x.shape
    N = M if y is None else y.shape[1]
    if B * M * N * D == 0:
        dx = torch.zeros_like(x) if need_x else None
        dy = torch.zeros_like(y) if need_y else None
        return dx, dy, torch.zeros((), dtype=x.dtype, device=x.device)
    xr, yr, xc, yc, nx, ny = _prepare_exact(x, y, kernel)
    grad = grad.contiguous()
    v = v.contiguous() if has_v else grad
    ell = ell.contiguous()
    gs = grad.stride()
    # (a side, c side) as (x, y): G[i, j]; as (y, x): Gᵀ[j, i] (the transposed grad, or v and
    # grad exchanged)
    x_side = (xc, yc, xr, yr, nx, ny, grad, gs, v)
    if has_v:
        y_side = (yc, xc, yr, xr, ny, nx, v, v.stride(), grad)
    else:
        y_side = (yc, xc, yr, xr, ny, nx, grad, (gs[0], gs[2], gs[1]), grad)
    dx = dy = dell = None
    if need_x or not need_y:
        dx, dell = _side_grad(*x_side, ell, kernel, symmetric, has_v, need_x)
    if need_y or (symmetric and need_x):
        dy, dell_y = _side_grad(*y_side, ell, kernel, symmetric, has_v, True)
        dell = dell_y if dell is None else dell
    if symmetric:
        return (dx + dy if need_x else None), None, dell.sum()
    return dx, dy, dell.sum()


def gram_ell_grad(k: Tensor, grad: Tensor, kernel: int, ell: Tensor) -> Tensor:
    """``dℓ`` of ``sum(grad * K)`` from ``K`` itself (B, M, N): ``Σ grad · φ(K) / ℓ`` with
    ``φ = ℓ·∂k/∂ℓ`` as a function of ``k`` (no distances; elementwise torch on the device)."""
    phi = lengthscale_factor_from_k(k, KERNEL_NAMES[kernel])
    return (grad * phi).sum() / ell
