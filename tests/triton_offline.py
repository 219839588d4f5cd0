"""Compile every Triton kernel launch for a real GPU (sm_90, the H200) on a machine without one.

The Triton interpreter (``TRITON_INTERPRET=1``, how CI runs the kernels) accepts programs the
GPU compiler rejects, and never meets GPU limits (registers, shared memory). This harness drives
the real launchers of :mod:`fastamort.ops._triton_gram` and :mod:`fastamort.ops._triton_ridge`
on CPU tensors with an offline CUDA target in place of a driver: each launch is compiled through
Triton's full pipeline (TTIR → TTGIR → LLVM → PTX → ``ptxas`` cubin) and not run, and each
autotuned launch compiles every one of its configs, as the autotuner would on the GPU. The
cubins' resource use (registers, spill stack, shared memory) comes from ``cuobjdump``.

Run it in a process without ``TRITON_INTERPRET`` (``tests/test_triton_offline.py`` does)::

    python tests/triton_offline.py [--group gram_forward ...] [--arch 90] [--json PATH]

It prints one row per compiled kernel; the outputs of the launchers are never computed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("triton_offline: run without TRITON_INTERPRET=1 (it compiles for a GPU)")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from fastamort.ops import _triton_gram as tg
from fastamort.ops import _triton_ridge as tr
from fastamort.ops.kernel_math import KERNEL_IDS

#: Shared memory one block may use (opt-in maximum), by compute capability: H100/H200, A100.
SHARED_LIMIT = {90: 232_448, 80: 166_912}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

DTYPES = (torch.float32, torch.float64)
# the Euclidean kernel with the longest epilogue (most registers) compiles every config
HEAVIEST_EUCLIDEAN = KERNEL_IDS["matern52"]


@dataclass
class Compiled:
    """One compiled kernel: the launch it came from and the cubin's resource use."""

    group: str
    kernel: str
    dtype: str
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int
    registers: int
    stack: int
    local: int


class _OfflineDriver:
    """Stands in for the CUDA driver: a device, a stream and a target, nothing to launch on."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def is_active(self) -> bool:
        return True


class _Recorder:
    """Patches Triton so launches compile (``warmup``) instead of running, and records them.

    ``full``: every autotuned launch compiles all its configs. Otherwise (the CI test) only the
    launches inside :meth:`every_config` do, the others their first config, and the plans cover
    fewer kernel functions (:meth:`kernel_ids`).
    """

    def __init__(self, arch: int, full: bool) -> None:
        self.arch = arch
        self.full = full
        self.kernels: list = []
        self._all_configs = full

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Recorder]:
        jit_run, tune_run = JITFunction.run, Autotuner.run
        recorder = self

        def compile_only(fn, *args, grid, warmup, **kwargs):
            kernel = jit_run(fn, *args, grid=grid, warmup=True, **kwargs)
            recorder.kernels.append(kernel)
            return kernel

        def compile_configs(tuner, *args, grid=None, **kwargs):
            kwargs.pop("warmup", None)
            configs = tuner.configs if recorder._all_configs else tuner.configs[:1]
            for config in configs:
                tuner.fn.run(*args, grid=grid, warmup=True, **kwargs, **config.all_kwargs())

        previous = driver._active  # None until a real driver was looked up
        driver.set_active(_OfflineDriver(self.arch))
        JITFunction.run, Autotuner.run = compile_only, compile_configs
        try:
            yield self
        finally:
            JITFunction.run, Autotuner.run = jit_run, tune_run
            driver._active = previous

    @contextlib.contextmanager
    def every_config(self, when: bool = True) -> Iterator[None]:
        """Autotuned launches inside compile every config (when ``when``)."""
        before = self._all_configs
        self._all_configs = before or when
        try:
            yield
        finally:
            self._all_configs = before

    def kernel_ids(self) -> list[int]:
        """Kernel functions to cover: all in full mode, else Gaussian, Matérn-5/2, Laplacian."""
        if self.full:
            return list(KERNEL_IDS.values())
        return [KERNEL_IDS[name] for name in ("gaussian", "matern52", "laplacian")]


# --------------------------------------------------------------------------------------------
# Launch plans: every kernel × dtype × block-size constexpr at least once, every autotune
# config at the heaviest kernel function (Matérn-5/2's epilogue, the Laplacian's 3-D tiles).
# Tensor contents are irrelevant (nothing runs).
# --------------------------------------------------------------------------------------------


def _t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def _ell(dtype: torch.dtype) -> torch.Tensor:
    return torch.ones((), dtype=dtype)


def _heavy(kernel: int) -> bool:
    return kernel in (HEAVIEST_EUCLIDEAN, KERNEL_IDS["laplacian"])


def plan_gram_forward(rec: _Recorder, dtype: torch.dtype) -> None:
    # D = 32 (the benchmarks' rows, 16-aligned: vectorised loads) with every config, D = 5 once
    for d in (32, 5):
        x, y = _t(1, 40, d, dtype=dtype), _t(1, 24, d, dtype=dtype)
        for kernel in rec.kernel_ids():
            with rec.every_config(_heavy(kernel) and d == 32):
                tg.gram_forward(x, None, kernel, _ell(dtype))
                tg.gram_forward(x, y, kernel, _ell(dtype))


def plan_gram_matmul(rec: _Recorder, dtype: torch.dtype) -> None:
    for d in (32, 5):
        x, y = _t(1, 40, d, dtype=dtype), _t(1, 24, d, dtype=dtype)
        for kernel in rec.kernel_ids():
            for p in (16, 17, 40):  # BLOCK_P 16 (every config: the benchmarked P), 32, 64
                with rec.every_config(_heavy(kernel) and p == 16 and d == 32):
                    tg.gram_matmul_forward(x, y, _t(1, 24, p, dtype=dtype), kernel, _ell(dtype))
            tg.gram_matmul_forward(x, None, _t(1, 40, 16, dtype=dtype), kernel, _ell(dtype))


def plan_gram_backward(rec: _Recorder, dtype: torch.dtype) -> None:
    # The slowest kernel to compile: outside full mode, first configs only (no Matérn-5/2 but one)
    m, n = 40, 24
    for kernel in rec.kernel_ids():
        laplacian = kernel == KERNEL_IDS["laplacian"]
        quick_skip = not rec.full and kernel == HEAVIEST_EUCLIDEAN
        for i, d in enumerate((16, 9, 3) if laplacian else (64, 33, 3)):  # every BLOCK_D
            x, y = _t(1, m, d, dtype=dtype), _t(1, n, d, dtype=dtype)
            tg.gram_backward(x, y, _t(1, m, n, dtype=dtype), None, kernel, _ell(dtype))
            if i > 0 or quick_skip:
                continue
            tg.gram_backward(x, None, _t(1, m, m, dtype=dtype), None, kernel, _ell(dtype))
            g, v = _t(1, m, 20, dtype=dtype), _t(1, n, 20, dtype=dtype)  # BLOCK_P 32
            tg.gram_backward(x, y, g, v, kernel, _ell(dtype))
            g, v = _t(1, m, 5, dtype=dtype), _t(1, m, 5, dtype=dtype)  # BLOCK_P 16
            tg.gram_backward(x, None, g, v, kernel, _ell(dtype))
            if quick_skip:
                break


def plan_cholesky(rec: _Recorder, dtype: torch.dtype) -> None:
    shift = torch.zeros(1, dtype=torch.float64)
    sizes = (1, 2, 3, 5, 9, 17, 33) if rec.full else (1, 9, 33)  # BLOCK_N 1 … 64
    for n in sizes:
        a = _t(1, n, n, dtype=dtype)
        with rec.every_config(n == 33):
            tr.factor(a, shift, method="small")
        for p in (1, 3, 5, 9) if rec.full else (1, 9):  # BLOCK_P 2 … 16
            with rec.every_config(n == 33 and p == 9):
                tr.ridge(a, _t(1, n, p, dtype=dtype), shift, method="small")
            if n <= tr.SMALL_MAX_N:
                tr.solve(torch.tril(a), _t(1, n, p, dtype=dtype))
    tr.solve(_t(1, 32, 32, dtype=dtype), _t(1, 32, 16, dtype=dtype))
    for block in (16, 32, 64):  # the blocked panels, triangular solves and trailing updates
        tr.factor(_t(1, 3 * block, 3 * block, dtype=dtype), shift, method="blocked", block=block)


def plan_kernel_ridge_fused(rec: _Recorder, dtype: torch.dtype) -> None:
    shift = torch.zeros(1, dtype=torch.float64)
    # (n, m, d, p): the largest auto-fused problem with predictions, then the other block sizes
    shapes = [(32, 40, 40, 20), (64, 10, 3, 2), (20, 0, 9, 17)]
    for kernel in rec.kernel_ids():
        for i, (n, m, d, p) in enumerate(shapes):
            x, y = _t(1, n, d, dtype=dtype), _t(1, n, p, dtype=dtype)
            x_new = _t(1, m, d, dtype=dtype) if m else None
            with rec.every_config(_heavy(kernel) and i == 0):
                tr.kernel_ridge_batched(x, y, shift, kernel, _ell(dtype), x_new, method="fused")


PLANS: dict[str, Callable[[_Recorder, torch.dtype], None]] = {
    "gram_forward": plan_gram_forward,
    "gram_matmul": plan_gram_matmul,
    "gram_backward": plan_gram_backward,
    "cholesky": plan_cholesky,
    "kernel_ridge_fused": plan_kernel_ridge_fused,
}


# --------------------------------------------------------------------------------------------
# Resource use and the command line
# --------------------------------------------------------------------------------------------


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """``{"registers", "stack", "local"}`` of the one function in ``cubin`` (``cuobjdump``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    line = next(x for x in text.splitlines() if "REG:" in x)
    fields = dict(item.split(":", 1) for item in line.split())
    return {
        "registers": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "local": int(fields["LOCAL"]),
    }


def _constexprs(kernel) -> dict:
    src = kernel.src
    names = [p.name for p in src.fn.params]
    return {names[path[0]]: value for path, value in src.constants.items() if len(path) == 1}


def compile_group(group: str, arch: int = 90, full: bool = False) -> list[Compiled]:
    """Compile every launch of one plan for ``sm_<arch>``, in float32 and float64."""
    rows = []
    for dtype in DTYPES:
        rec = _Recorder(arch, full)
        with rec.installed():
            PLANS[group](rec, dtype)
        seen = set()
        for kernel in rec.kernels:
            if kernel.hash in seen:
                continue
            seen.add(kernel.hash)
            meta = kernel.metadata
            constexprs = {k: v for k, v in _constexprs(kernel).items() if isinstance(v, int | bool)}
            rows.append(Compiled(
                group, meta.name, str(dtype).removeprefix("torch."), constexprs,
                meta.num_warps, meta.num_stages, meta.shared,
                **_resource_usage(kernel.asm["cubin"]),
            ))  # fmt: skip
    return rows


def summary(rows: list[Compiled]) -> str:
    """Markdown table: per kernel function and dtype, how many compiled variants, how many spill
    registers to the stack, the worst spill, and the largest shared memory."""
    lines = [
        "| kernel | dtype | compiled | spilling | worst spill (B/thread) | max shared (KiB) |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Compiled]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.dtype), []).append(r)
    for (kernel, dtype), rs in groups.items():
        spilling = [r for r in rs if r.stack > 0 or r.local > 0]
        worst = max((r.stack + r.local for r in rs), default=0)
        shared = max(r.shared for r in rs) / 1024
        lines.append(
            f"| `{kernel}` | {dtype} | {len(rs)} | {len(spilling)} | {worst} | {shared:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", choices=sorted(PLANS), help="default: all")
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H200)")
    parser.add_argument("--full", action="store_true", help="every launch, every config")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--summary", action="store_true", help="print a markdown summary")
    parser.add_argument("--from-json", help="summarise the rows of an earlier --json run")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            print(summary([Compiled(**r) for r in json.load(f)["rows"]]))
        return 0
    rows = []
    for group in args.group or list(PLANS):
        rows += compile_group(group, args.arch, args.full)
    print(f"{'kernel':24} {'dtype':8} {'warps':>5} {'stages':>6} {'regs':>4} {'stack':>5} "
          f"{'shared':>7}  constexprs")  # fmt: skip
    for r in rows:
        print(f"{r.kernel:24} {r.dtype:8} {r.num_warps:5} {r.num_stages:6} {r.registers:4} "
              f"{r.stack:5} {r.shared:7}  {r.constexprs}")  # fmt: skip
    if args.summary:
        print(summary(rows))
    over = [r for r in rows if r.shared > SHARED_LIMIT.get(args.arch, r.shared)]
    if over:
        print(f"{len(over)} variants need more shared memory than sm_{args.arch} has per block")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "shared_limit": SHARED_LIMIT.get(args.arch),
                       "triton": triton.__version__, "full": args.full,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
