"""Property tests (Hypothesis): gram and gram_matmul, forward and backward, on every backend,
against float64 direct differences of the same points, whatever their offsets and scales.

Each example draws a point cloud of one of five kinds (standard normal; a large common offset;
one outlier; two or three far-apart clusters; many exact duplicates) at a random scale, a
kernel, a lengthscale around the spread, Y = X or not, and the dtype. The ground truth is
``k`` of the float64 direct differences of the points as given (already rounded to the dtype).

The accuracy rule of docs/design.md is checked twice, errors as maximum absolute errors:

* err(backend) <= 2 · err(torch reference, same dtype) + FLOOR[dtype], the documented rule;
* err(backend) <= 2 · err(direct differences in the same dtype) + FLOOR[dtype]: since the torch
  reference recomputes what the GEMM trick would cancel, it is itself accurate, so the rule is
  also held against the plain direct difference ("as accurate as a direct difference").

Errors of K are absolute (0 <= k <= 1). Those of K·v are divided by max_p Σ_j |v_jp| (the size
of an output entry), those of the gradients of Σ G∘K by the size of their terms: max_i Σ_j |G_ij|
/ ℓ for the points, Σ |G| / ℓ for ℓ (|∂k/∂x| and |ℓ ∂k/∂ℓ| are O(1/ℓ) and O(1)).

The C++ examples cover its three routes (direct; fused GEMM-trick tile; BLAS GEMM), with the
sizes that select them. The module reports its example count and the largest errors seen.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from conftest import BACKEND_PARAMS, FLOOR, FUSED_MAX_D
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastamort import gram, gram_matmul, record_backends
from fastamort.ops.gram import gram_ref
from fastamort.ops.kernel_math import KERNEL_IDS, KERNEL_NAMES, kernel_from_s

KINDS = ("plain", "offset", "outlier", "clusters", "duplicates")
DTYPES = (torch.float32, torch.float64)
# Examples per test, backend and kind of point cloud: the compiled backends get more, the
# interpreter fewer.
EXAMPLES = {"cpp": 12, "torch": 8, "triton": 5}
# M·N·D above which the C++ engine takes a tiled route (bindings: kSmallProblemWork).
CPP_TILED_WORK = 1 << 20

# largest error seen and example count per (test, backend, dtype), reported at the end
LARGEST: dict[tuple[str, str, str], float] = defaultdict(float)
COUNT: dict[str, int] = defaultdict(int)
KIND_COUNT: dict[str, int] = defaultdict(int)


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    if not COUNT:
        return
    lines = [f"gram property tests: {sum(COUNT.values())} examples {dict(COUNT)}"]
    lines.append(f"  point clouds: {dict(KIND_COUNT)}")
    lines += [
        f"  largest error {test} {backend} {dtype}: {err:.3g}"
        for (test, backend, dtype), err in sorted(LARGEST.items())
    ]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


def _sizes(draw, backend: str, kernel: str, symmetric: bool) -> tuple[int, int, int]:
    """(M, N, D): small ones everywhere; for C++ also sizes on its fused and GEMM routes."""
    route = "direct"
    if backend == "cpp" and kernel != "laplacian":
        route = draw(st.sampled_from(["direct", "fused", "gemm"]))
    if route == "direct":
        top = 24 if backend == "triton" else 40
        d = draw(st.integers(1, 40 if backend == "triton" else 70))
        return draw(st.integers(1, top)), draw(st.integers(1, top)), d
    d = draw(st.integers(5, 64) if route == "fused" else st.integers(65, 90))
    m_low = math.isqrt(CPP_TILED_WORK // d) + 2  # M² D above the limit when Y = X
    m = draw(st.integers(m_low, m_low + 60))
    n_low = m if symmetric else CPP_TILED_WORK // (m * d) + 2
    return m, draw(st.integers(n_low, n_low + 60)), d


@st.composite
def problems(draw, backend: str, kind: str):
    dtype = draw(st.sampled_from(DTYPES))
    kernel = draw(st.sampled_from(KERNEL_NAMES))
    symmetric = draw(st.booleans())
    m, n, d = _sizes(draw, backend, kernel, symmetric)
    seed = draw(st.integers(0, 2**31 - 1))
    spread = 10.0 ** draw(st.floats(-3, 3))
    gen = torch.Generator().manual_seed(seed)
    total = m + (0 if symmetric else n)
    pts = spread * torch.randn(total, d, generator=gen, dtype=torch.float64)
    if kind == "offset":
        top = 8.0 if dtype == torch.float64 else 6.0
        shift = 10.0 ** draw(st.floats(0, top))
        pts += shift * torch.randn(d, generator=gen, dtype=torch.float64).sign()
    elif kind == "outlier":
        row, col = draw(st.integers(0, total - 1)), draw(st.integers(0, d - 1))
        pts[row, col] = draw(st.sampled_from([-1.0, 1.0])) * spread * 10.0 ** draw(st.floats(3, 10))
    elif kind == "clusters":
        count = draw(st.integers(2, 3))
        apart = spread * 10.0 ** draw(st.floats(2, 8))
        centres = apart * torch.randn(count, d, generator=gen, dtype=torch.float64)
        pts += centres[torch.randint(count, (total,), generator=gen)]
    elif kind == "duplicates":
        pts = pts[torch.randint(max(1, total // 4), (total,), generator=gen)]
    pts = pts.to(dtype)
    scale = d if kernel == "laplacian" else math.sqrt(d)
    ell = spread * scale * 10.0 ** draw(st.floats(-1, 1))
    x, y = pts[:m], (None if symmetric else pts[m:])
    return kind, kernel, x, y, ell


def _direct_gram(x: torch.Tensor, y: torch.Tensor | None, kernel: str, ell) -> torch.Tensor:
    """k of direct differences in x's dtype (differentiable), in row chunks."""
    other = x if y is None else y
    rows = []
    for i in range(0, x.shape[0], 64):
        diff = x[i : i + 64].unsqueeze(-2) - other.unsqueeze(-3)
        if kernel == "laplacian":
            s = diff.abs().sum(-1) / ell
        else:
            s = diff.pow(2).sum(-1) / (ell * ell)
        rows.append(kernel_from_s(s, kernel))
    return torch.cat(rows) if rows else x.new_zeros(0, other.shape[0])


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _check_rule(test: str, backend: str, dtype, err: float, err_ref: float, err_direct: float):
    LARGEST[(test, backend, str(dtype).replace("torch.", ""))] = max(
        LARGEST[(test, backend, str(dtype).replace("torch.", ""))], err
    )
    floor = FLOOR[dtype]
    assert err <= 2 * err_ref + floor, (err, err_ref)
    assert err <= 2 * err_direct + floor, (err, err_direct)


def _check_route(backend: str, x, y, kernel: str) -> None:
    """The C++ examples take the route their sizes select (direct, fused or GEMM)."""
    if backend != "cpp" or kernel == "laplacian":
        return
    from fastamort import _C

    m, d = x.shape
    n = m if y is None else y.shape[0]
    if m * n * d <= CPP_TILED_WORK or d <= 4:
        expected = "direct"
    else:
        expected = "fused" if d <= FUSED_MAX_D else "gemm"
    assert _C.gram_route(m, n, d, KERNEL_IDS[kernel]) == expected, (m, n, d)


SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _given(test):
    """@given(problems) with the backend's example count, one test per backend and kind."""

    def run(device, backend, kind):
        @settings(max_examples=EXAMPLES[backend], **SETTINGS)
        @given(problems(backend, kind))
        def inner(problem):
            test(backend, problem)

        inner()

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    run = pytest.mark.parametrize("kind", KINDS)(run)
    return pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)(run)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@_given
def test_gram_as_accurate_as_direct_differences(backend, problem):
    """K(x, y) and K(x, x) (exactly symmetric, unit diagonal) on every backend."""
    kind, kernel, x, y, ell = problem
    COUNT[f"gram-{backend}"] += 1
    KIND_COUNT[kind] += 1
    _check_route(backend, x, y, kernel)
    truth = _direct_gram(x.double(), None if y is None else y.double(), kernel, ell)
    with record_backends() as ran:
        k = gram(x, y, kernel=kernel, lengthscale=ell, backend=backend)
    assert ran == [("gram", backend)]
    if y is None:
        assert torch.equal(k, k.T)
        assert torch.equal(k.diagonal(), torch.ones_like(k.diagonal()))
    err_ref = _err(gram_ref(x, y, kernel, ell), truth)
    err_direct = _err(_direct_gram(x, y, kernel, ell), truth)
    _check_rule("gram", backend, x.dtype, _err(k, truth), err_ref, err_direct)


@_given
def test_gram_matmul_as_accurate_as_direct_differences(backend, problem):
    """K(x, y) @ v, never storing K on the compiled backends."""
    kind, kernel, x, y, ell = problem
    COUNT[f"gram_matmul-{backend}"] += 1
    KIND_COUNT[kind] += 1
    n = x.shape[0] if y is None else y.shape[0]
    gen = torch.Generator().manual_seed(n)
    v = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(x.dtype)
    size = float(v.double().abs().sum(0).max())
    truth = _direct_gram(x.double(), None if y is None else y.double(), kernel, ell) @ v.double()
    out = gram_matmul(x, y, v, kernel=kernel, lengthscale=ell, backend=backend)
    err_ref = _err(gram_ref(x, y, kernel, ell) @ v, truth) / size
    err_direct = _err(_direct_gram(x, y, kernel, ell) @ v, truth) / size
    _check_rule("gram_matmul", backend, x.dtype, _err(out, truth) / size, err_ref, err_direct)


def _grads(x, y, ell, g, v, kernel, backend):
    """Gradients of sum(g * K(x, y)) (v None) or sum(g * K(x, y) @ v) w.r.t. x, y and ℓ;
    backend None: direct differences by autograd."""
    xs = x.detach().clone().requires_grad_()
    ys = None if y is None else y.detach().clone().requires_grad_()
    ell_t = torch.tensor(ell, dtype=x.dtype, requires_grad=True)
    if backend is None:
        k = _direct_gram(xs, ys, kernel, ell_t)
        out = k if v is None else k @ v
    elif v is None:
        out = gram(xs, ys, kernel=kernel, lengthscale=ell_t, backend=backend)
    else:
        out = gram_matmul(xs, ys, v, kernel=kernel, lengthscale=ell_t, backend=backend)
    inputs = [t for t in (xs, ys, ell_t) if t is not None]
    return torch.autograd.grad((out * g).sum(), inputs)


def _grad_errors(got, truth, weights: torch.Tensor, ell: float) -> list[float]:
    """Errors of (dx, [dy,] dℓ) over the sizes of their terms (module docstring)."""
    w = weights.double().abs()
    sizes = [float(w.sum(1).max()) / ell]
    if len(got) == 3:
        sizes.append(float(w.sum(0).max()) / ell)
    sizes.append(float(w.sum()) / ell)
    return [_err(a, b) / max(s, 1e-300) for a, b, s in zip(got, truth, sizes, strict=True)]


@_given
def test_gradients_as_accurate_as_direct_differences(backend, problem):
    """Gradients of Σ G∘K (gram) and of Σ g∘(K v) (gram_matmul) w.r.t. x, y and ℓ."""
    kind, kernel, x, y, ell = problem
    COUNT[f"gradients-{backend}"] += 1
    KIND_COUNT[kind] += 1
    m = x.shape[0]
    n = m if y is None else y.shape[0]
    gen = torch.Generator().manual_seed(m * 7919 + n)
    for with_v in (False, True):
        v = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(x.dtype) if with_v else None
        g = torch.randn(m, 2 if with_v else n, generator=gen, dtype=torch.float64).to(x.dtype)
        weights = g if v is None else g @ v.T  # G of Σ G∘K
        x64 = x.double()
        y64 = None if y is None else y.double()
        v64 = None if v is None else v.double()
        truth = _grads(x64, y64, ell, g.double(), v64, kernel, None)
        got = _grad_errors(_grads(x, y, ell, g, v, kernel, backend), truth, weights, ell)
        ref = _grad_errors(_grads(x, y, ell, g, v, kernel, "torch"), truth, weights, ell)
        direct = _grad_errors(_grads(x, y, ell, g, v, kernel, None), truth, weights, ell)
        test = "gram_matmul.backward" if with_v else "gram.backward"
        for e, e_ref, e_direct in zip(got, ref, direct, strict=True):
            _check_rule(test, backend, x.dtype, e, e_ref, e_direct)
