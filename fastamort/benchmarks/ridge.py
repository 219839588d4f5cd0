"""Benchmark of ``ridge_solve`` and ``kernel_ridge_batched`` against pure PyTorch.

In one run, on the same inputs:

* single solves, n ∈ {256, 1024, 2048, 4096}, p ∈ {1, 17}: each backend against
  ``torch.linalg.cholesky`` + ``torch.cholesky_solve`` on K + λI, and LAPACK ``potrf`` (SciPy,
  the same BLAS threads) as the physical reference; GFLOP/s counting n³/3 + 2n²p;
* batched solves, B = 4096 problems with n ∈ {8, 16, 32, 64}, p = 1, against the same torch
  pair on the (B, n, n) stack;
* fused batched kernel ridge (B = 4096, n ∈ {8, 16, 32, 64}, d = 4): ``kernel_ridge_batched``
  against the torch chain gram → +λI → cholesky → cholesky_solve.

Run as ``fastamort bench ridge [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import scipy.linalg
import torch

import fastamort
from fastamort.ops.kernel_ridge_batched import kernel_ridge_batched_ref

from ._harness import available_backends, bench_main, environment, measure

LAM = 0.1


def _spd(batch: tuple[int, ...], n: int, dtype, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, n, n, generator=g, dtype=dtype)
    return (a @ a.mT / n + torch.eye(n, dtype=dtype)).to(device)


def _torch_pair(k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    return torch.cholesky_solve(b, torch.linalg.cholesky(k + LAM * eye))


def bench_single(n, p, dtype, device, backends) -> list[dict[str, Any]]:
    k = _spd((), n, dtype, device, seed=n)
    b = torch.randn(n, p, dtype=dtype, device=device)
    t_torch = measure(lambda: _torch_pair(k, b), device)["median_s"]
    t_potrf = None
    if device.type == "cpu":
        a_np = (k + LAM * torch.eye(n, dtype=dtype)).numpy()
        t_potrf = measure(
            lambda: scipy.linalg.lapack.get_lapack_funcs("potrf", (a_np,))(
                a_np, lower=1, overwrite_a=0
            ),
            device,
        )["median_s"]
    flops = n**3 / 3 + 2 * n * n * p
    rows = []
    for name in backends:
        t = measure(lambda name=name: fastamort.ridge_solve(k, b, LAM, backend=name), device)
        rows.append(
            {
                "case": "single",
                "n": n,
                "p": p,
                "B": 1,
                "dtype": _dt(dtype),
                "backend": name,
                "time_s": t["median_s"],
                "torch_s": t_torch,
                "speedup": t_torch / t["median_s"],
                "gflops": flops / t["median_s"] / 1e9,
                "potrf_s": t_potrf,
                "potrf_gflops": (n**3 / 3 / t_potrf / 1e9) if t_potrf else None,
            }
        )
    return rows


def bench_batched(batch, n, dtype, device, backends) -> list[dict[str, Any]]:
    k = _spd((batch,), n, dtype, device, seed=n)
    b = torch.randn(batch, n, 1, dtype=dtype, device=device)
    t_torch = measure(lambda: _torch_pair(k, b), device)["median_s"]
    flops = batch * (n**3 / 3 + 2 * n * n)
    rows = []
    for name in backends:
        t = measure(lambda name=name: fastamort.ridge_solve(k, b, LAM, backend=name), device)
        rows.append(
            {
                "case": "batched",
                "n": n,
                "p": 1,
                "B": batch,
                "dtype": _dt(dtype),
                "backend": name,
                "time_s": t["median_s"],
                "torch_s": t_torch,
                "speedup": t_torch / t["median_s"],
                "gflops": flops / t["median_s"] / 1e9,
            }
        )
    return rows


def bench_fused(batch, n, dtype, device, backends, d: int = 4) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(n)
    x = torch.rand(batch, n, d, generator=g, dtype=dtype).to(device)
    y = torch.randn(batch, n, 1, generator=g, dtype=dtype).to(device)

    def chain():
        return kernel_ridge_batched_ref(x, y, LAM, "gaussian", 1.0).alpha

    t_torch = measure(chain, device)["median_s"]
    rows = []
    for name in backends:

        def fused(name=name):
            return fastamort.kernel_ridge_batched(x, y, LAM, backend=name).alpha

        t = measure(fused, device)["median_s"]
        rows.append(
            {
                "case": "fused_krr",
                "n": n,
                "p": 1,
                "B": batch,
                "D": d,
                "dtype": _dt(dtype),
                "backend": name,
                "time_s": t,
                "torch_s": t_torch,
                "speedup": t_torch / t,
            }
        )
    return rows


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def run(*, quick: bool = False, device: str | None = None):
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backends = available_backends("ridge_solve", dev)
    singles = [256, 1024] if quick else [256, 1024, 2048, 4096]
    smalls = [8, 32] if quick else [8, 16, 32, 64]
    batch = 1024 if quick else 4096
    rows: list[dict[str, Any]] = []
    for dtype in (torch.float32, torch.float64):
        for n in singles:
            for p in (1, 17):
                rows += bench_single(n, p, dtype, dev, backends)
        for n in smalls:
            rows += bench_batched(batch, n, dtype, dev, backends)
            rows += bench_fused(batch, n, dtype, dev, backends)
        print(f"  done {dtype}", flush=True)
    return rows, environment(dev)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, case in zip(axes, ("single", "batched", "fused_krr"), strict=True):
        for (dtype, backend), marker in zip(
            sorted({(r["dtype"], r["backend"]) for r in rows if r["case"] == case}),
            "osv^",
            strict=False,
        ):
            sel = [
                r
                for r in rows
                if r["case"] == case
                and r["dtype"] == dtype
                and r["backend"] == backend
                and r["p"] in (1,)
            ]
            ax.plot(
                [r["n"] for r in sel],
                [r["speedup"] for r in sel],
                marker=marker,
                label=f"{backend} {dtype}",
            )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n")
        ax.set_title(f"{case}: speed-up over torch (p = 1)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "case",
    "dtype",
    "B",
    "n",
    "p",
    "backend",
    "time_s",
    "torch_s",
    "speedup",
    "gflops",
    "potrf_gflops",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("ridge", __doc__, run, plot, COLUMNS, argv)
