"""Benchmark of ``gram`` and ``gram_matmul`` (Gaussian kernel) against pure PyTorch.

For each size, dtype and backend, on the same inputs in one run:

* ``torch_ref_s``: the faster of ``torch.cdist`` + ``exp`` and the expanded form
  (``gram_ref``): the pure-PyTorch reference a user would write;
* ``gemm_s``: ``torch.matmul`` of the same shapes (2·M·N·D FLOPs, the GEMM floor);
* each fastamort backend: time, ``speedup`` over the reference, ``x_gemm`` (time over the
  GEMM floor) and GFLOP/s counting 2·M·N·D;
* ``gram_matmul`` (P = 16) against materialise-then-matmul, with the measured peak extra
  memory of both paths;
* dispatch overhead (``op`` = ``dispatch:<op>``): the per-call time of the public op on a tiny
  input (gram 8×8, ridge_solve 8×8, kernel_ridge_batched 64×(8×8)), the eager route the
  learner takes (``time_s``), against the same call through its ``torch.ops.fastamort``
  registration (``registered_s``, what ``torch.compile`` and ``vmap`` run) and the backend's
  kernel alone (``kernel_s``, no checks and no dispatch).

Run as ``fastamort bench gram [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import fastamort
from fastamort._backends import backend_impl
from fastamort.ops.gram import gram_op, gram_ref
from fastamort.ops.kernel_ridge_batched import kernel_ridge_batched_op
from fastamort.ops.ridge_solve import ridge_solve_op

from ._harness import (
    available_backends,
    bench_main,
    environment,
    measure,
    peak_extra_memory,
    sync,
)

FULL_SIZES = (256, 1024, 4096)
FULL_DIMS = (2, 32, 784)
QUICK_SIZES = (256, 1024)
QUICK_DIMS = (2, 32)
P_COLUMNS = 16
GPU_TARGET_SIZES = (16384, 32768)
GPU_TARGET_DIM = 64
#: Tiny problems of the dispatch-overhead rows: n points (n × n matrices), batch of the fused
#: kernel ridge fits, feature dimension.
DISPATCH_N, DISPATCH_BATCH, DISPATCH_D = 8, 64, 3


def _cdist_gaussian(x: torch.Tensor, y: torch.Tensor, ell: float) -> torch.Tensor:
    return torch.exp(torch.cdist(x, y).square_().mul_(-0.5 / ell**2))


def bench_one(
    m: int, d: int, dtype: torch.dtype, device: torch.device, backends: Sequence[str], seed: int = 0
) -> list[dict[str, Any]]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(m, d, generator=gen, dtype=dtype).to(device)
    y = torch.randn(m, d, generator=gen, dtype=dtype).to(device)
    v = torch.randn(m, P_COLUMNS, generator=gen, dtype=dtype).to(device)
    ell = float(d) ** 0.5
    base = {"M": m, "N": m, "D": d, "dtype": str(dtype).replace("torch.", "")}
    t_cdist = measure(lambda: _cdist_gaussian(x, y, ell), device)["median_s"]
    t_expanded = measure(lambda: gram_ref(x, y, "gaussian", ell), device)["median_s"]
    t_ref = min(t_cdist, t_expanded)
    t_gemm = measure(lambda: x @ y.T, device)["median_s"]
    flops = 2.0 * m * m * d
    rows = []
    for b in backends:
        t = measure(lambda b=b: fastamort.gram(x, y, lengthscale=ell, backend=b), device)
        t_sym = measure(lambda b=b: fastamort.gram(x, lengthscale=ell, backend=b), device)
        rows.append(
            {
                **base,
                "op": "gram",
                "backend": b,
                "time_s": t["median_s"],
                "torch_ref_s": t_ref,
                "torch_cdist_s": t_cdist,
                "torch_expanded_s": t_expanded,
                "gemm_s": t_gemm,
                "speedup": t_ref / t["median_s"],
                "x_gemm": t["median_s"] / t_gemm,
                "gflops": flops / t["median_s"] / 1e9,
                "sym_time_s": t_sym["median_s"],
            }
        )

    # gram_matmul against materialise-then-matmul
    def materialised() -> torch.Tensor:
        return gram_ref(x, y, "gaussian", ell) @ v

    t_mat = measure(materialised, device)["median_s"]
    mem_mat = peak_extra_memory(materialised, device)
    for b in backends:

        def fused(b: str = b) -> torch.Tensor:
            return fastamort.gram_matmul(x, y, v, lengthscale=ell, backend=b)

        t = measure(fused, device)["median_s"]
        mem = peak_extra_memory(fused, device)
        rows.append(
            {
                **base,
                "op": "gram_matmul",
                "P": P_COLUMNS,
                "backend": b,
                "time_s": t,
                "torch_ref_s": t_mat,
                "speedup": t_mat / t,
                "gemm_s": t_gemm,
                "gflops": (flops + 2.0 * m * m * P_COLUMNS) / t / 1e9,
                "peak_extra_bytes": mem,
                "ref_peak_extra_bytes": mem_mat,
                "memory_ratio": (mem / mem_mat) if (mem is not None and mem_mat) else None,
            }
        )
    return rows


def per_call_time(fn: Callable[[], Any], device: torch.device, calls: int = 200) -> float:
    """Median over seven runs of ``calls`` back-to-back calls, per call, in seconds."""
    fn()
    times = []
    for _ in range(7):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def bench_dispatch(
    dtype: torch.dtype, device: torch.device, backends: Sequence[str], seed: int = 0
) -> list[dict[str, Any]]:
    """Per-call times of the public ops on tiny inputs, eager and through torch.library."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, batch, d = DISPATCH_N, DISPATCH_BATCH, DISPATCH_D
    x = torch.randn(n, d, generator=gen, dtype=dtype).to(device)
    k = fastamort.gram(x, backend="torch") + 0.1 * torch.eye(n, dtype=dtype, device=device)
    b = torch.randn(n, 1, generator=gen, dtype=dtype).to(device)
    xb = torch.randn(batch, n, d, generator=gen, dtype=dtype).to(device)
    yb = torch.randn(batch, n, 1, generator=gen, dtype=dtype).to(device)
    ell = torch.tensor(1.0, dtype=dtype, device=device)
    lam1 = torch.full((1,), 0.1, dtype=dtype, device=device)
    shift = torch.full((1,), 0.1, dtype=torch.float64, device=device)
    lam_b = torch.full((batch,), 0.1, dtype=torch.float64, device=device)
    base = {"M": n, "N": n, "D": d, "dtype": str(dtype).replace("torch.", "")}

    def cases_for(be: str) -> dict[str, tuple[Callable[[], Any], ...]]:
        """(eager public op, registered op, kernel alone or None) per op on backend ``be``."""
        ridge = backend_impl("ridge", be)
        cases: dict[str, tuple[Any, ...]] = {
            "gram": (
                lambda: fastamort.gram(x, backend=be),
                lambda: gram_op(x[None], None, ell, 0, be),
                None
                if be == "torch"
                else lambda: backend_impl("gram", be).gram_forward(x[None], None, 0, ell),
            ),
            "ridge_solve": (
                lambda: fastamort.ridge_solve(k, b, 0.1, backend=be),
                lambda: ridge_solve_op(k[None], b[None], lam1, be),
                lambda: ridge.ridge(k[None], b[None], shift),
            ),
        }
        if be != "torch":  # the torch backend composes the other ops
            cases["kernel_ridge_batched"] = (
                lambda: fastamort.kernel_ridge_batched(xb, yb, 0.1, backend=be),
                lambda: kernel_ridge_batched_op(xb, yb, lam_b, ell, None, 0, be),
                lambda: ridge.kernel_ridge_batched(xb, yb, lam_b, 0, ell, None),
            )
        return cases

    rows = []
    for be in backends:
        for op, (eager, registered, kernel) in cases_for(be).items():
            t_eager = per_call_time(eager, device)
            t_reg = per_call_time(registered, device)
            t_kernel = None if kernel is None else per_call_time(kernel, device)
            rows.append(
                {
                    **base,
                    "op": f"dispatch:{op}",
                    "B": batch if op == "kernel_ridge_batched" else 1,
                    "backend": be,
                    "time_s": t_eager,
                    "registered_s": t_reg,
                    "registered_ratio": t_reg / t_eager,
                    "kernel_s": t_kernel,
                }
            )
    return rows


def run(
    *,
    quick: bool = False,
    device: str | None = None,
    sizes: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    dims = dims or (QUICK_DIMS if quick else FULL_DIMS)
    backends = available_backends("gram", dev)
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        for d in dims:
            for m in sizes:
                rows += bench_one(m, d, dtype, dev, backends)
                print(f"  done M=N={m} D={d} {dtype}", flush=True)
    for dtype in dtypes:
        rows += bench_dispatch(dtype, dev, backends)
        print(f"  done dispatch overhead {dtype}", flush=True)
    if dev.type == "cuda" and not quick:  # the H200 targets of the Gram issue
        for m in GPU_TARGET_SIZES:
            rows += bench_one(m, GPU_TARGET_DIM, torch.float32, dev, backends)
            print(f"  done M=N={m} D={GPU_TARGET_DIM} float32 (GPU target)", flush=True)
    return rows, environment(dev)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Speed-up over the torch reference per shape, one bar group per backend and op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, op in zip(axes, ("gram", "gram_matmul"), strict=True):
        sel = [r for r in rows if r["op"] == op]  # (the dispatch rows are not plotted)
        labels = sorted({(r["dtype"], r["D"], r["M"]) for r in sel})
        backends = sorted({r["backend"] for r in sel})
        width = 0.8 / max(len(backends), 1)
        for k, b in enumerate(backends):
            vals = []
            for lab in labels:
                hit = [
                    r["speedup"]
                    for r in sel
                    if (r["dtype"], r["D"], r["M"]) == lab and r["backend"] == b
                ]
                vals.append(hit[0] if hit else 0.0)
            ax.bar([i + k * width for i in range(len(labels))], vals, width, label=b)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels([f"{dt[-2:]} D{d}\nM{m}" for dt, d, m in labels], fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"{op}: speed-up over pure PyTorch")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "op",
    "dtype",
    "M",
    "D",
    "backend",
    "time_s",
    "torch_ref_s",
    "speedup",
    "gemm_s",
    "x_gemm",
    "gflops",
    "memory_ratio",
    "registered_s",
    "registered_ratio",
    "kernel_s",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("gram", __doc__, run, plot, COLUMNS, argv)
