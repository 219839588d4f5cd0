"""Every Triton kernel compiles for the H200 (sm_90), checked on a machine without a GPU.

The interpreter tests check what the kernels compute; they cannot see whether the GPU compiler
accepts them or what they cost in registers and shared memory. ``tests/triton_offline.py``
compiles the launches of each plan through Triton's whole pipeline down to a ``ptxas`` cubin, in
a subprocess without ``TRITON_INTERPRET`` (about 4.5 CPU-minutes for all groups). Failing here
means the GPU run would fail, or an autotune config could never launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
if not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists():
    pytest.skip(f"Triton {triton.__version__} ships no ptxas/cuobjdump", allow_module_level=True)

from fastamort.ops import _triton_gram as tg  # noqa: E402
from fastamort.ops import _triton_ridge as tr  # noqa: E402

pytestmark = pytest.mark.triton

ARCH = 90
# kernel functions each plan must have compiled, in both dtypes
EXPECTED = {
    "gram_forward": {"_gram_fwd_kernel"},
    "gram_matmul": {"_gram_matmul_kernel"},
    "gram_backward": {"_gram_bwd_kernel"},
    "cholesky": {
        "_factor_small_kernel",
        "_ridge_small_kernel",
        "_solve_small_kernel",
        "_panel_kernel",
        "_panel_trsm_kernel",
        "_trailing_kernel",
    },
    "kernel_ridge_fused": {"_krr_fused_kernel"},
}


_SMALL = tr._warps_configs(*tr._SMALL_WARPS, interpreter=False)
_FUSED = tr._warps_configs(*tr._FUSED_WARPS, interpreter=False)
# plan → (constexprs identifying one launch, the configs its autotuner has on a GPU): the launches
# the plans compile with every config (the interpreter's tables hold one config, not these)
EVERY_CONFIG = {
    "gram_forward": [
        ({"KERNEL": 3, "SYMMETRIC": True}, tg._GRAM_CONFIGS["euclid"]),
        ({"KERNEL": 4, "SYMMETRIC": False}, tg._GRAM_CONFIGS["l1"]),
    ],
    "gram_matmul": [
        (
            {"KERNEL": 3, "SYMMETRIC": False, "BLOCK_P": 16},
            {"float32": tg._MATMUL_CONFIGS["euclid"], "float64": tg._MATMUL_CONFIGS["euclid64"]},
        ),
        ({"KERNEL": 4, "SYMMETRIC": False, "BLOCK_P": 16}, tg._MATMUL_CONFIGS["l1"]),
    ],
    "cholesky": [
        ({"BLOCK_N": 64, "BLOCK_P": 16}, _SMALL),  # _ridge_small
        ({"BLOCK_N": 64, "BLOCK_P": None}, _SMALL),  # _factor_small
    ],
    "kernel_ridge_fused": [({"KERNEL": 3, "HAS_NEW": True, "BLOCK_N": 32}, _FUSED)],
}


def _compile(group: str, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")
    out = tmp / f"{group}.json"
    cmd = [sys.executable, str(HERE / "triton_offline.py"), "--group", group, "--json", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (
        f"offline sm_{ARCH} compile of {group} failed:\n{run.stderr[-6000:]}"
    )
    data = json.loads(out.read_text())
    assert data["arch"] == ARCH
    return data


def _config_key(kwargs: dict, warps: int, stages: int) -> tuple:
    return tuple(sorted(kwargs.items())), warps, stages


@pytest.mark.parametrize("group", list(EXPECTED))
def test_every_launch_compiles_for_sm90(group: str, tmp_path: Path) -> None:
    data = _compile(group, tmp_path)
    rows, shared_limit = data["rows"], data["shared_limit"]  # 227 KiB a block may use on sm_90
    by_dtype = defaultdict(set)
    for row in rows:
        by_dtype[row["dtype"]].add(row["kernel"])
    assert by_dtype == {"float32": EXPECTED[group], "float64": EXPECTED[group]}

    for row in rows:
        where = f"{row['kernel']} {row['dtype']} {row['constexprs']} warps={row['num_warps']}"
        assert 0 <= row["shared"] <= shared_limit, f"{where}: {row['shared']} B of shared memory"
        assert 0 < row["registers"] <= 255, where
        assert row["num_warps"] * 32 <= 1024, where

    # The launches compiled with every autotune config got each of them, and each such launch
    # (one specialisation: constexprs, 1-strides) has a config that does not spill registers.
    for constexprs, table in EVERY_CONFIG.get(group, []):
        for dtype in ("float32", "float64"):
            configs = table[dtype] if isinstance(table, dict) else table  # per dtype, or shared
            want = {_config_key(c.kwargs, c.num_warps, c.num_stages) for c in configs}
            names = {k for c in configs for k in c.kwargs}
            launches = defaultdict(dict)
            for r in rows:
                if r["dtype"] != dtype or any(
                    r["constexprs"].get(k) != v for k, v in constexprs.items()
                ):
                    continue
                spec = tuple(sorted((k, v) for k, v in r["constexprs"].items() if k not in names))
                key = _config_key(
                    {k: r["constexprs"][k] for k in names}, r["num_warps"], r["num_stages"]
                )
                launches[spec][key] = r["stack"] + r["local"]
            complete = [spills for spills in launches.values() if want <= set(spills)]
            assert complete, (constexprs, dtype, "no launch compiled every config")
            for spills in complete:
                assert min(spills.values()) == 0, (constexprs, dtype, "every config spills", spills)
