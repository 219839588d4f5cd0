"""The C++ extension's buffer pool (csrc/buffer_pool.hpp): large outputs and workspaces reuse
freed buffers, never share storage with live ones, never read what a former owner left in
them, and the cache keeps within its cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastamort
from fastamort.ops import _cpp

pytestmark = pytest.mark.skipif(
    fastamort.backend_report()["cpp"] != "available", reason="extension not built"
)

MIB = 1 << 20


def _points(n: int, d: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def _pooled_block(capacity_mib: int) -> torch.Tensor:
    """A pooled float64 output whose buffer is (after rounding to 2 MiB) capacity_mib MiB."""
    n = int(((capacity_mib * MIB) // 8) ** 0.5)
    return fastamort.gram(_points(n, 1), lengthscale=1.0, backend="cpp")


def _poison_cache() -> None:
    """Fills the cache with NaN buffers of every size a 1-16 MiB request can take."""
    blocks = [_pooled_block(c) for c in range(2, 18, 2) for _ in range(2)]
    for b in blocks:
        b.fill_(float("nan"))
    del blocks
    assert _cpp.buffer_cache_info()["cached_bytes"] > 0


def test_a_repeated_call_takes_the_freed_buffer():
    x = _points(600, 8)  # K is 2.9 MB: pooled
    _cpp.empty_buffer_cache()
    k = fastamort.gram(x, lengthscale=2.0, backend="cpp")
    first_storage = k.data_ptr()
    del k
    before = _cpp.buffer_cache_info()
    k = fastamort.gram(x, lengthscale=2.0, backend="cpp")
    after = _cpp.buffer_cache_info()
    assert after["hits"] == before["hits"] + 1
    assert after["misses"] == before["misses"]
    assert k.data_ptr() == first_storage


def test_live_outputs_never_share_storage():
    xs = [_points(600, 8, seed=s) for s in range(3)]
    want = [fastamort.gram(x, lengthscale=2.0, backend="torch") for x in xs]
    k0 = fastamort.gram(xs[0], lengthscale=2.0, backend="cpp")
    k1 = fastamort.gram(xs[1], lengthscale=2.0, backend="cpp")
    assert k0.data_ptr() != k1.data_ptr()
    freed = k0.data_ptr()
    del k0
    k2 = fastamort.gram(xs[2], lengthscale=2.0, backend="cpp")
    assert k2.data_ptr() == freed  # the freed one is reused, the live one is not
    torch.testing.assert_close(k1, want[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(k2, want[2], rtol=0, atol=1e-12)


def _engine_outputs(dtype: torch.dtype) -> list[torch.Tensor]:
    """Gram (GEMM and fused routes, symmetric and cross), Gram-matmul, ridge solve, Cholesky
    and the gradients of a Gram -> ridge chain, all on the cpp backend, at pooled sizes."""
    x = _points(700, 65, dtype, seed=1)  # the GEMM route (D past the fused bound)
    x_fused = _points(700, 16, dtype, seed=2)
    y = _points(300, 65, dtype, seed=3)
    v = _points(700, 40, dtype, seed=4)
    out = [
        fastamort.gram(x, lengthscale=9.0, backend="cpp"),
        fastamort.gram(x, y, lengthscale=9.0, backend="cpp"),
        fastamort.gram(x_fused, lengthscale=5.0, backend="cpp"),
        fastamort.gram_matmul(x, x, v, lengthscale=9.0, backend="cpp"),
    ]
    k = fastamort.gram(x, lengthscale=9.0, backend="torch")
    out.append(fastamort.ridge_solve(k, v, 1.0, backend="cpp"))
    out.append(fastamort.cholesky(k + torch.eye(700, dtype=dtype), backend="cpp"))
    xg = x.clone().requires_grad_(True)
    ell = torch.tensor(9.0, dtype=dtype, requires_grad=True)
    solved = fastamort.ridge_solve(fastamort.gram(xg, lengthscale=ell, backend="cpp"), v, 1.0)
    out += list(torch.autograd.grad(solved.square().sum(), (xg, ell)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_what_the_reused_buffers_held(dtype):
    """Every pooled workspace and output is written before it is read: with the cache full of
    NaN buffers, the ops give what they give on freshly mapped (zero) memory."""
    _cpp.empty_buffer_cache()
    clean = _engine_outputs(dtype)
    _cpp.empty_buffer_cache()
    _poison_cache()
    hits = _cpp.buffer_cache_info()["hits"]
    poisoned = _engine_outputs(dtype)
    assert _cpp.buffer_cache_info()["hits"] > hits  # the NaN buffers were handed out
    _cpp.empty_buffer_cache()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(poisoned, clean, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_empty_cache_returns_the_cache_and_keeps_live_buffers():
    live = fastamort.gram(_points(600, 8), lengthscale=2.0, backend="cpp")
    want = live.clone()
    _pooled_block(4)  # freed at once: cached
    assert _cpp.buffer_cache_info()["cached_bytes"] > 0
    _cpp.empty_buffer_cache()
    info = _cpp.buffer_cache_info()
    assert info["cached_bytes"] == 0
    assert info["live_bytes"] >= live.numel() * 8
    torch.testing.assert_close(live, want, rtol=0, atol=0)


def test_concurrent_calls_each_get_their_own_buffers():
    sizes = [500, 600, 700, 600, 500, 700]
    xs = [_points(n, 8, seed=i) for i, n in enumerate(sizes)]
    want = [fastamort.gram(x, lengthscale=2.0, backend="torch") for x in xs]

    def run(i: int) -> bool:
        return all(
            torch.allclose(
                fastamort.gram(xs[i], lengthscale=2.0, backend="cpp"), want[i], rtol=0, atol=1e-12
            )
            for _ in range(10)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(len(sizes))))


_CHILD = """
import json, torch, fastamort
from fastamort.ops import _cpp
for n in (800, 900, 1000, 600, 700):
    fastamort.gram(torch.randn(n, 8, dtype=torch.float64), lengthscale=2.0, backend="cpp")
print(json.dumps(_cpp.buffer_cache_info()))
"""


def _child_info(cache_mb: str) -> dict:
    env = dict(os.environ, FASTAMORT_BUFFER_CACHE_MB=cache_mb)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cache_keeps_within_its_cap():
    info = _child_info("4")  # freed buffers of 6-8 MiB, then two of 4, against a 4 MiB cap
    assert info["limit_bytes"] == 4 * MIB
    assert 0 < info["cached_bytes"] <= 4 * MIB


def test_a_zero_cap_turns_the_cache_off():
    info = _child_info("0")
    assert info["limit_bytes"] == 0
    assert info["cached_bytes"] == 0
    assert info["hits"] == 0


@pytest.mark.parametrize("bad", ["lots", "-1", "12MB", "1.5", str((1 << 20) + 1)])
def test_a_bad_cache_size_is_a_clear_error_not_the_default(monkeypatch, bad):
    """The extension would take a value it cannot parse as the default 256 MiB without a
    word; the C++ backend refuses it before its first use, naming the variable."""
    from fastamort import _backends

    monkeypatch.setattr(_backends, "_cache_env_checked", False)
    monkeypatch.setenv("FASTAMORT_BUFFER_CACHE_MB", bad)
    with pytest.raises(ValueError, match="FASTAMORT_BUFFER_CACHE_MB: expected a whole number"):
        fastamort.gram(torch.randn(5, 2, dtype=torch.float64), lengthscale=1.0, backend="cpp")
    monkeypatch.setenv("FASTAMORT_BUFFER_CACHE_MB", " 64 ")
    fastamort.gram(torch.randn(5, 2, dtype=torch.float64), lengthscale=1.0, backend="cpp")
    assert _backends._cache_env_checked
