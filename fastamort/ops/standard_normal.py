"""``standard_normal``: N(0, 1) samples for the sleep phase, from the C++ engine's vectorised
generator on CPU tensors and from torch's generator elsewhere.

A learner step draws ``n_sleep × D`` noise numbers two or three times; torch's CPU generator
(a serial Mersenne twister) gives about 0.27 G numbers/s there, a tenth of a step at
M = 2000, D = 784. The engine's stream (``csrc/normal_impl.hpp``) cuts the numbers into
chunks of :data:`CHUNK`, runs 8 xoshiro128** generators per chunk, one per SIMD lane, seeded
by SplitMix64, and turns pairs of uniforms into normals by Box-Muller, on every core.

Reproducibility: the engine's seed is drawn from torch's generator (``generator``, or the
default one), so ``torch.manual_seed`` fixes the samples as it fixes any torch draw, and the
numbers do not depend on the thread count. They differ from ``torch.randn``'s numbers for the
same seed, and may differ in the last bits between instruction sets (AVX2 or not).
:func:`standard_normal_ref` is the same stream in NumPy (the tests' reference).

:func:`torch_stream` makes the automatic choice torch's generator inside a block.

Backends: ``cpp`` (CPU, float32 and float64) and ``torch`` (``torch.randn``: any device and
floating dtype, the only route under ``torch.compile`` and ``torch.func`` transforms). On CUDA
torch's generator is already a GPU kernel; ``backend="triton"`` runs it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .._backends import BackendUnavailableError, cpp_module, note_backend, resolve_backend
from ._library import traced

__all__ = [
    "CHUNK",
    "standard_normal",
    "standard_normal_like",
    "standard_normal_ref",
    "torch_stream",
]

CHUNK = 1 << 14  # numbers per chunk of the engine's stream (csrc/normal_impl.hpp)
_LANES = 8
_ENGINE_DTYPES = (torch.float32, torch.float64)
_STATE = threading.local()  # .torch_depth: nesting depth of torch_stream() in this thread


@contextlib.contextmanager
def torch_stream() -> Iterator[None]:
    """Inside the block (this thread), automatic draws use torch's generator, as fastamort
    0.1.0 did: the experiments draw their data sets so, so that a data set is a function of its
    seed alone, whatever the engine's stream (and docs/RESULTS.md stays reproducible)."""
    _STATE.torch_depth = getattr(_STATE, "torch_depth", 0) + 1
    try:
        yield
    finally:
        _STATE.torch_depth -= 1


# --------------------------------------------------------------------------------------
# Reference: the engine's stream in NumPy
# --------------------------------------------------------------------------------------
def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _rotl32(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def _chunk_words(seed: int, chunk: int, steps: int) -> np.ndarray:
    """(steps, 8) uint32: the xoshiro128** outputs of the 8 lanes of ``chunk``."""
    j = np.arange(_LANES, dtype=np.uint64) + np.uint64(chunk * _LANES)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        a = _splitmix64(np.uint64(seed) + (np.uint64(2) * j + np.uint64(1)) * gamma)
        b = _splitmix64(np.uint64(seed) + (np.uint64(2) * j + np.uint64(2)) * gamma)
        s = [(w & np.uint64(0xFFFFFFFF)).astype(np.uint32) for w in (a, a >> np.uint64(32))]
        s += [(w & np.uint64(0xFFFFFFFF)).astype(np.uint32) for w in (b, b >> np.uint64(32))]
        words = np.empty((steps, _LANES), dtype=np.uint32)
        for t in range(steps):
            words[t] = _rotl32(s[1] * np.uint32(5), 7) * np.uint32(9)
            shifted = s[1] << np.uint32(9)
            s[2] ^= s[0]
            s[3] ^= s[1]
            s[1] ^= s[2]
            s[0] ^= s[3]
            s[2] ^= shifted
            s[3] = _rotl32(s[3], 11)
    return words


def standard_normal_ref(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The first ``n`` numbers (n,) of the engine's stream of ``seed`` (0 ≤ seed < 2⁶⁴),
    computed in float64 NumPy (slow: for tests). float32 and float64 streams differ (float64
    uses two words per uniform)."""
    if dtype not in _ENGINE_DTYPES:
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    out = np.empty(n, dtype=np.float64)
    words_per_pair = 2 if dtype == torch.float32 else 4
    for c, start in enumerate(range(0, n, CHUNK)):
        count = min(CHUNK, n - start)
        pairs = -(-count // 16)  # 16 numbers (8 lanes × cos, sin) per step group
        w = _chunk_words(seed, c, pairs * words_per_pair).astype(np.float64)
        if dtype == torch.float32:
            u1 = (np.floor(w[0::2] / 256) + 1) * 2.0**-24
            u2 = np.floor(w[1::2] / 256) * 2.0**-24
        else:
            u1 = 1 - (np.floor(w[0::4] / 64) * 2.0**27 + np.floor(w[1::4] / 32)) * 2.0**-53
            u2 = (np.floor(w[2::4] / 64) * 2.0**27 + np.floor(w[3::4] / 32)) * 2.0**-53
        r = np.sqrt(-2 * np.log(u1))
        block = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], 1)
        out[start : start + count] = block.reshape(-1)[:count]
    return torch.from_numpy(out).to(dtype)


# --------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------
def _shape(size: int | Sequence[int]) -> tuple[int, ...]:
    dims = (size,) if isinstance(size, int) else tuple(size)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"size: expected an int or a sequence of ints, got {size!r}")
    if any(d < 0 for d in dims):
        raise ValueError(f"size: dimensions must be non-negative, got {dims}")
    return dims


def _backend(backend: str | None, dtype: torch.dtype, device: torch.device) -> str:
    """The backend that draws: ``auto`` picks ``cpp`` for the engine's dtypes on CPU."""
    explicit = backend not in (None, "auto")
    if not explicit and getattr(_STATE, "torch_depth", 0) > 0:
        return "torch"
    chosen = resolve_backend("standard_normal", backend, device)
    if chosen == "triton":  # torch's CUDA generator is the GPU kernel
        return "torch"
    if chosen == "cpp" and (dtype not in _ENGINE_DTYPES or traced()):
        if explicit:
            why = "torch.compile / torch.func tracing" if traced() else f"dtype {dtype}"
            raise BackendUnavailableError(
                f"standard_normal: backend='cpp' cannot run {why}: it draws float32 and "
                "float64 in eager mode only"
            )
        return "torch"
    return chosen


def standard_normal(
    size: int | Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """A tensor of shape ``size`` of independent N(0, 1) numbers.

    Args:
        dtype: a floating dtype (default: torch's default dtype).
        device: default CPU.
        generator: the torch generator that seeds the draw (default: torch's default one for
            the device); it advances by one draw.
        backend: "auto" (default), "cpp" or "torch" (see the module's docstring).
    """
    dims = _shape(size)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    device = torch.device("cpu" if device is None else device)
    chosen = _backend(backend, dtype, device)
    note_backend("standard_normal", chosen)
    if chosen == "torch":
        return torch.randn(dims, dtype=dtype, device=device, generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    n = int(np.prod(dims, dtype=np.int64))
    flat = cpp_module().standard_normal(n, seed, dtype == torch.float64)
    return torch.from_numpy(flat).view(dims)


def standard_normal_like(
    t: torch.Tensor, *, generator: torch.Generator | None = None, backend: str | None = None
) -> torch.Tensor:
    """N(0, 1) numbers of ``t``'s shape, dtype and device (``torch.randn_like`` on the
    engine's generator where it can run)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t: expected a tensor, got {type(t).__name__}")
    return standard_normal(
        t.shape, dtype=t.dtype, device=t.device, generator=generator, backend=backend
    )
