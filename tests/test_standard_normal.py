"""fastamort.ops.standard_normal: the engine's N(0, 1) stream against its NumPy reference,
its statistics, its seeding from torch's generator, and backend choice (no silent fallback)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fastamort
from fastamort._backends import BackendUnavailableError, cpp_unavailable_reason
from fastamort.ops import standard_normal, standard_normal_like, standard_normal_ref
from fastamort.ops.standard_normal import CHUNK, torch_stream

needs_cpp = pytest.mark.skipif(cpp_unavailable_reason() is not None, reason="no extension")
DTYPES = [torch.float32, torch.float64]
# float32: the engine's polynomials against float64 NumPy, |z| <= 5.8
TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


def engine(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    from fastamort import _C

    return torch.from_numpy(_C.standard_normal(n, seed, dtype == torch.float64))


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 15, 16, 17, 1021, CHUNK - 1, CHUNK, CHUNK + 1, 40_009])
def test_engine_matches_reference(n, dtype):
    got = engine(n, 12345, dtype)
    ref = standard_normal_ref(n, 12345, dtype)
    assert got.dtype == dtype and got.shape == (n,)
    torch.testing.assert_close(got, ref, rtol=0, atol=TOL[dtype])


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_stream_prefix_and_seeds(dtype):
    """Number i depends only on (seed, i): a longer draw extends a shorter one; seeds differ,
    including seeds that differ in the top bit (the full 64 bits are used)."""
    long = engine(3 * CHUNK + 5, 7, dtype)
    for n in (1, 17, CHUNK + 3, 2 * CHUNK):
        assert torch.equal(engine(n, 7, dtype), long[:n])
    assert not torch.equal(engine(64, 8, dtype), long[:64])
    assert not torch.equal(engine(64, 7 + 2**63, dtype), long[:64])


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_the_numbers(dtype):
    from fastamort import _C

    before = _C.num_threads()
    try:
        _C.set_num_threads(1)
        one = engine(5 * CHUNK + 11, 3, dtype)
        _C.set_num_threads(2)
        two = engine(5 * CHUNK + 11, 3, dtype)
    finally:
        _C.set_num_threads(before)
    assert torch.equal(one, two)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_statistics(dtype):
    """Fixed seed, n = 2^20: mean, variance, skewness, kurtosis within 4 standard errors;
    Kolmogorov-Smirnov against N(0, 1); the polar angle uniform and r² exponential for the
    Box-Muller pairs (cos at 16k + l, sin at 16k + 8 + l); no lag-1 or lane correlation."""
    n = 1 << 20
    z = engine(n, 2024, dtype).double().numpy()
    se = 1 / math.sqrt(n)
    assert abs(z.mean()) < 4 * se
    assert abs(z.var() - 1) < 4 * math.sqrt(2) * se
    assert abs(stats.skew(z)) < 4 * math.sqrt(6) * se
    assert abs(stats.kurtosis(z)) < 4 * math.sqrt(24) * se
    assert stats.kstest(z, "norm").pvalue > 1e-3
    pairs = z.reshape(-1, 16)
    c, s = pairs[:, :8].ravel(), pairs[:, 8:].ravel()
    assert stats.kstest(np.arctan2(s, c), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3
    assert stats.kstest(c * c + s * s, "expon", args=(0, 2)).pvalue > 1e-3
    for lag in (1, 8, 16):
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 4 * se
    tails = np.abs(z) > 3  # P = 0.0027
    assert abs(tails.mean() - 0.0026998) < 4 * math.sqrt(0.0027 / n)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_seeded_by_torch_generator(dtype):
    torch.manual_seed(5)
    a = standard_normal((3, 1000), dtype=dtype)
    b = standard_normal((3, 1000), dtype=dtype)
    torch.manual_seed(5)
    assert torch.equal(standard_normal((3, 1000), dtype=dtype), a)
    assert not torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    c = standard_normal((3, 1000), dtype=dtype, generator=g)
    g.manual_seed(5)
    assert torch.equal(standard_normal((3, 1000), dtype=dtype, generator=g), c)
    # the engine's stream of the seed the generator gave
    g.manual_seed(5)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=g))
    torch.testing.assert_close(
        c.reshape(-1), standard_normal_ref(3000, seed, dtype), rtol=0, atol=TOL[dtype]
    )


@needs_cpp
def test_backend_choice_and_recording():
    with fastamort.record_backends() as ran:
        x = standard_normal((4, 5))
        standard_normal_like(x, backend="torch")
        standard_normal(3, dtype=torch.float16)  # not an engine dtype: torch's generator
    assert ran == [
        ("standard_normal", "cpp"),
        ("standard_normal", "torch"),
        ("standard_normal", "torch"),
    ]
    with pytest.raises(BackendUnavailableError, match=r"dtype torch\.float16"):
        standard_normal(3, dtype=torch.float16, backend="cpp")


def test_torch_backend_is_torch_randn():
    g = torch.Generator().manual_seed(1)
    got = standard_normal((2, 3), dtype=torch.float64, generator=g, backend="torch")
    assert torch.equal(got, torch.randn(2, 3, dtype=torch.float64, generator=g.manual_seed(1)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="size: dimensions must be non-negative"):
        standard_normal((2, -1))
    with pytest.raises(TypeError, match="size"):
        standard_normal((2.0, 3))
    with pytest.raises(TypeError, match="dtype"):
        standard_normal(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="t: expected a tensor"):
        standard_normal_like(np.zeros(3))
    with pytest.raises(ValueError, match="unknown backend"):
        standard_normal(3, backend="fortran")
    with pytest.raises(TypeError, match="dtype"):
        standard_normal_ref(3, 0, torch.float16)


@pytest.mark.parametrize("shape", [(0,), (1,), (0, 4), (2, 3, 5)])
def test_shapes_and_like(shape):
    x = torch.empty(shape, dtype=torch.float64)
    y = standard_normal_like(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert bool(torch.isfinite(y).all())


def test_traced_draws_use_torch():
    """Under torch.compile the draw is torch's (the engine reads NumPy buffers)."""

    def draw(t):
        return t + standard_normal_like(t)

    out = torch.compile(draw, backend="eager", fullgraph=True)(torch.zeros(4, 3))
    assert out.shape == (4, 3)


@needs_cpp
def test_gaussian_models_sample_with_the_engine():
    model = fastamort.models.FactorAnalysis(6, 2)
    with fastamort.record_backends() as ran:
        model.sample(10)
    assert ("standard_normal", "cpp") in ran


@needs_cpp
def test_torch_stream_block_uses_torch_generator():
    with fastamort.record_backends() as ran, torch_stream():
        torch.manual_seed(3)
        inside = standard_normal((2, 4))
        with torch_stream():  # nests
            standard_normal(1)
        standard_normal(1, backend="cpp")  # an explicit backend still wins
    standard_normal(1)
    assert [b for _, b in ran] == ["torch", "torch", "cpp"]
    torch.manual_seed(3)
    assert torch.equal(inside, torch.randn(2, 4))


def test_expfam_targets_respects_overridden_natural_params():
    """GaussianObservationModel.expfam_targets shares the mean between the two targets, unless
    a subclass redefines natural_params or log_normaliser: then those are used."""

    class Shifted(fastamort.models.FactorAnalysis):
        def natural_params(self, z):
            return super().natural_params(z) + 1.0

    torch.manual_seed(0)
    z = torch.randn(4, 2)
    for cls in (fastamort.models.FactorAnalysis, Shifted):
        model = cls(3, 2)
        first, eta = model.expfam_targets(z)
        torch.testing.assert_close(first, model.log_normaliser(z) - model.log_prior(z))
        torch.testing.assert_close(eta, model.natural_params(z))
