"""Backend discovery and per-call dispatch.

Every op has three backends, tried in this order for ``backend="auto"``:

``triton``  CUDA tensors, when Triton imports (also CPU tensors under ``TRITON_INTERPRET=1``,
            but only when asked for explicitly: that is how CI runs the GPU kernels);
``cpp``     CPU tensors, when the extension ``fastamort._C`` was built;
``torch``   the pure-PyTorch reference, always available.

``backend=`` on a call, or the ``FASTAMORT_BACKEND`` environment variable, names one
explicitly; an explicit backend that cannot run raises :class:`BackendUnavailableError`
saying why, never a silent fallback. :func:`record_backends` lets callers (and the tests)
see which backend really ran.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from functools import cache
from types import ModuleType
from typing import Literal, Protocol

import torch

BACKENDS: tuple[str, ...] = ("triton", "cpp", "torch")
_CHOICES = ("auto", *BACKENDS)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs (the message says why)."""


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@cache
def _import_status(module: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return None, f"{type(exc).__name__}: {exc}"


def cpp_module() -> ModuleType:
    """The compiled extension ``fastamort._C``; raises if it is not built."""
    mod, _ = _import_status("fastamort._C")
    if mod is None:
        why = cpp_unavailable_reason()
        raise BackendUnavailableError(f"the C++ backend is not available: {why}")
    if not _cache_env_checked:
        check_buffer_cache_env()
    threads = torch.get_num_threads()
    if threads != _cpp_threads[0] and hasattr(mod, "set_num_threads"):
        # the extension has its own OpenMP runtime: keep it at torch.set_num_threads's value
        mod.set_num_threads(threads)
        _cpp_threads[0] = threads
    return mod


_cpp_threads = [0]
_cache_env_checked = False

#: The largest ``FASTAMORT_BUFFER_CACHE_MB`` (1 TiB; more would overflow the byte count).
MAX_BUFFER_CACHE_MB = 1 << 20


def check_buffer_cache_env() -> None:
    """ValueError naming ``FASTAMORT_BUFFER_CACHE_MB`` unless it is unset, empty or a whole
    number of MiB in [0, :data:`MAX_BUFFER_CACHE_MB`]. The extension reads it when its buffer
    pool starts and would take anything else as the default (256) without a word; the C++
    backend checks it before its first use."""
    global _cache_env_checked
    text = os.environ.get("FASTAMORT_BUFFER_CACHE_MB", "").strip()
    ok = not text or (text.isascii() and text.isdigit() and int(text) <= MAX_BUFFER_CACHE_MB)
    if not ok:
        raise ValueError(
            "FASTAMORT_BUFFER_CACHE_MB: expected a whole number of MiB from 0 (no cache) to "
            f"{MAX_BUFFER_CACHE_MB}, or unset for the default 256; got {text!r}"
        )
    _cache_env_checked = True


def triton_module(name: str) -> ModuleType:
    """A fastamort module holding Triton kernels (imports Triton on first use)."""
    reason = triton_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"Triton is not usable: {reason}")
    mod, why = _import_status(name)
    if mod is None:
        raise BackendUnavailableError(f"{name} failed to import: {why}")
    return mod


def triton_unavailable_reason() -> str | None:
    """Why Triton cannot be used at all in this process, or None."""
    _, why = _import_status("triton")
    if why is not None:
        return f"triton does not import ({why}); install the extra fastamort[gpu]"
    return None


def cpp_unavailable_reason() -> str | None:
    """Why the C++ backend cannot be used at all, or None."""
    _, why = _import_status("fastamort._C")
    if why is None:
        return None
    if why.startswith("ModuleNotFoundError"):
        return (
            f"the extension fastamort._C is not installed ({why}): the package was built "
            "without it, either on purpose (FASTAMORT_NO_EXT=1) or because its compile failed "
            "(setup.py then warns and goes on); reinstall with `pip install -v` to see the "
            "compiler's messages, and FASTAMORT_REQUIRE_EXT=1 to make a failed compile fatal"
        )
    return f"the extension fastamort._C is installed but does not import ({why})"


def _why_not(backend: str, device: torch.device) -> str | None:
    if backend == "torch":
        return None
    if backend == "cpp":
        reason = cpp_unavailable_reason()
        if reason is None and device.type != "cpu":
            reason = f"it runs on CPU tensors only, got a {device.type} tensor"
        return reason
    reason = triton_unavailable_reason()
    if reason is None and device.type != "cuda":
        if device.type == "cpu" and not interpreter_enabled():
            reason = "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 before start)"
        elif device.type != "cpu":
            reason = f"it runs on CUDA tensors only, got a {device.type} tensor"
    return reason


@torch.compiler.assume_constant_result
def resolve_backend(op: str, backend: str | None, device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device``.

    ``backend`` None or "auto" defers to ``FASTAMORT_BACKEND`` and then to the automatic
    order; anything explicit is checked and refused with the reason. ``torch.compile`` runs
    this once while tracing and keeps the answer as a constant of the compiled graph.
    """
    requested = "auto" if backend is None else backend
    source = "backend"
    if requested == "auto":
        env = os.environ.get("FASTAMORT_BACKEND", "auto").strip().lower() or "auto"
        if env != "auto":
            requested, source = env, "FASTAMORT_BACKEND"
    if requested not in _CHOICES:
        raise ValueError(f"{source}: unknown backend {requested!r}; expected one of {_CHOICES}")
    if requested == "auto":
        if device.type == "cuda" and _why_not("triton", device) is None:
            return "triton"
        if device.type == "cpu" and _why_not("cpp", device) is None:
            return "cpp"
        return "torch"
    reason = _why_not(requested, device)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: {source}={requested!r} cannot run: {reason}")
    return requested


def backend_report() -> dict[str, str]:
    """For each backend, "available" or the reason it is not (used by ``fastamort info``)."""
    report = {"torch": "available"}
    cpp = cpp_unavailable_reason()
    report["cpp"] = "available" if cpp is None else cpp
    tri = triton_unavailable_reason()
    if tri is not None:
        report["triton"] = tri
    elif torch.cuda.is_available():
        report["triton"] = "available (CUDA)"
    elif interpreter_enabled():
        report["triton"] = "available through the interpreter (TRITON_INTERPRET=1), CPU tensors"
    else:
        report["triton"] = "imports, but no CUDA device (set TRITON_INTERPRET=1 to interpret)"
    return report


class GramBackend(Protocol):
    """The Gram jobs of a compiled backend (``fastamort.ops._cpp``, ``fastamort.ops._triton_gram``).

    Tensors are batched, (B, ·, ·); ``kid`` is an id of :mod:`fastamort.ops.kernel_math` and
    ``ell`` the lengthscale as a 0-d tensor.
    """

    def gram_forward(
        self, x: torch.Tensor, y: torch.Tensor | None, kid: int, ell: torch.Tensor
    ) -> torch.Tensor:
        """K (B, M, N) of x (B, M, D) and y (B, N, D) (None: y = x)."""

    def gram_matmul_forward(
        self, x: torch.Tensor, y: torch.Tensor | None, v: torch.Tensor, kid: int, ell: torch.Tensor
    ) -> torch.Tensor:
        """K(x, y) @ v (B, M, P) for v (B, N, P), without storing K."""

    def gram_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        grad: torch.Tensor,
        v: torch.Tensor | None,
        kid: int,
        ell: torch.Tensor,
        need_x: bool = True,
        need_y: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(dx | None, dy | None, dℓ 0-d): gradients of sum(G ∘ K), G = grad or grad·vᵀ;
        only the point gradients asked for."""

    def gram_ell_grad(
        self, k: torch.Tensor, grad: torch.Tensor, kid: int, ell: torch.Tensor
    ) -> torch.Tensor:
        """dℓ (0-d) of sum(grad ∘ K) from K itself (no distances)."""


class RidgeBackend(Protocol):
    """The factor/solve jobs of a backend (``fastamort.ops._cpp``, ``fastamort.ops._torch``,
    ``fastamort.ops._triton_ridge``): only lower triangles are read, ``shift`` (B,) float64 is
    added to the diagonals, and ``info`` (B,) int64 > 0 marks the members that failed (their
    outputs are garbage or NaN); a factor with a pivot L_jj² below the dtype's smallest normal
    number counts as failed."""

    def factor(self, a: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L (B, n, n), info)."""

    def solve(self, lower: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x (B, n, p) with L Lᵀ x = b."""

    def ridge(
        self, k: torch.Tensor, b: torch.Tensor, shift: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(x (B, n, p), L, info) for (k + shift·I) x = b."""

    def symmetric_rank2k(self, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha·(a bᵀ + b aᵀ) (B, n, n) for a, b (B, n, p): the backward's gradient w.r.t. K."""


class FusedRidgeBackend(RidgeBackend, Protocol):
    """A :class:`RidgeBackend` with the fused kernel ridge job (``cpp`` and ``triton``)."""

    def kernel_ridge_batched(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        shift: torch.Tensor,
        kid: int,
        ell: torch.Tensor,
        x_new: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(alpha (B, n, p), prediction (B, m, p) | None, info) of K(x, x) + shift·I fits."""


_IMPL_MODULES = {
    ("gram", "cpp"): "fastamort.ops._cpp",
    ("gram", "triton"): "fastamort.ops._triton_gram",
    ("ridge", "cpp"): "fastamort.ops._cpp",
    ("ridge", "torch"): "fastamort.ops._torch",
    ("ridge", "triton"): "fastamort.ops._triton_ridge",
}


def backend_impl(kind: Literal["gram", "ridge"], backend: str) -> GramBackend | RidgeBackend:
    """The adapter module of ``backend`` for the ``kind`` of job: a :class:`GramBackend`
    ("gram": "cpp" or "triton") or a :class:`RidgeBackend` ("ridge": "cpp", "torch" or
    "triton"). The Triton modules are imported on first use."""
    try:
        module = _IMPL_MODULES[kind, backend]
    except KeyError:
        raise ValueError(f"no {kind} adapters for backend {backend!r}") from None
    if backend == "triton":
        return triton_module(module)  # type: ignore[return-value]
    return importlib.import_module(module)  # type: ignore[return-value]


_RECORDERS: list[list[tuple[str, str]]] = []


def note_backend(op: str, backend: str) -> None:
    """Called by each op where its kernel actually runs."""
    for rec in _RECORDERS:
        rec.append((op, backend))


@contextlib.contextmanager
def record_backends() -> Iterator[list[tuple[str, str]]]:
    """Collects ``(op, backend)`` for every kernel launched inside the block.

    >>> import torch, fastamort
    >>> with fastamort.record_backends() as ran:
    ...     _ = fastamort.gram(torch.randn(4, 2), backend="torch")
    >>> ran
    [('gram', 'torch')]
    """
    rec: list[tuple[str, str]] = []
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)
