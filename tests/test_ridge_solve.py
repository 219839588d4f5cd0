"""ridge_solve: (K + λI) X = B on every backend, per-batch λ, jitter, errors, autograd."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import BACKEND_PARAMS, gradcheck_on
from test_cholesky import spd

from fastamort import NotPSDError, NumericalWarning, record_backends, ridge_solve
from fastamort.ops.ridge_solve import ridge_solve_ref

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-3, torch.float64: 1e-10}
SIZES = [(1, 1), (2, 3), (7, 1), (31, 17), (33, 2), (65, 5), (67, 1), (257, 17), (2000, 3)]
TRITON_SIZES = [(1, 1), (2, 3), (7, 1), (17, 4), (33, 2), (67, 3)]


def _rhs(shape, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_and_agreement_with_torch_solve(device, backend, dtype):
    for n, p in TRITON_SIZES if backend == "triton" else SIZES:
        k = spd((), n, dtype, device, seed=n) - 0.5 * torch.eye(n, dtype=dtype, device=device)
        b = _rhs((n, p), dtype, device)
        with record_backends() as ran:
            x = ridge_solve(k, b, 0.7, backend=backend)
        assert ran == [("ridge_solve", backend)]
        eye = torch.eye(n, dtype=dtype, device=device)
        residual = ((k + 0.7 * eye) @ x - b).abs().max() / b.abs().max()
        assert residual <= TOL[dtype], (n, p)
        if dtype == torch.float64:
            torch.testing.assert_close(x, ridge_solve_ref(k, b, 0.7), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_vector_rhs_batched_and_per_batch_lambda(device, backend):
    k = spd((4,), 9, torch.float64, device)
    b = _rhs((4, 9), torch.float64, device)
    lam = torch.tensor([0.0, 0.1, 1.0, 10.0], dtype=torch.float64, device=device)
    x = ridge_solve(k, b, lam, backend=backend)
    assert x.shape == (4, 9)
    for i in range(4):
        torch.testing.assert_close(x[i], ridge_solve(k[i], b[i], float(lam[i]), backend=backend))
        torch.testing.assert_close(x[i], ridge_solve_ref(k[i], b[i], float(lam[i])))
    # broadcasting: one K for a batch of right-hand sides and a batch of λ
    xb = ridge_solve(k[0], _rhs((3, 9, 2), torch.float64, device), lam[1:], backend=backend)
    assert xb.shape == (3, 9, 2)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_zero_ridge_on_rank_deficient_k_gets_jitter(device, backend):
    v = _rhs((8, 3), torch.float64, device)
    k = v @ v.mT
    b = k @ _rhs((8, 1), torch.float64, device)  # consistent right-hand side
    with pytest.warns(NumericalWarning, match="ridge_solve"):
        x = ridge_solve(k, b, 0.0, backend=backend)
    assert float((k @ x - b).abs().max()) < 1e-4


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_indefinite_raises(device, backend):
    k = -spd((), 5, torch.float64, device)
    with pytest.warns(NumericalWarning), pytest.raises(NotPSDError, match="5×5"):
        ridge_solve(k, _rhs((5, 1), torch.float64, device), 0.1, backend=backend)


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_gradcheck_float64(device, backend):
    k = spd((2,), 5, torch.float64, device).requires_grad_()
    b = _rhs((2, 5, 3), torch.float64, device).requires_grad_()
    lam = torch.tensor([0.3, 0.8], dtype=torch.float64, device=device, requires_grad=True)
    with record_backends() as ran:
        assert gradcheck_on(
            backend,
            lambda k, b, lam: ridge_solve((k + k.mT) / 2, b, lam, backend=backend),
            (k, b, lam),
        )
    assert ("ridge_solve.backward", backend) in ran
    scalar = torch.tensor(0.5, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck_on(
        backend, lambda s: ridge_solve(k.detach(), b.detach(), s, backend=backend), (scalar,)
    )


@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
@pytest.mark.parametrize("wants", ["b", "lam", "k"])
def test_backward_forms_only_the_gradients_asked_for(device, backend, wants, monkeypatch):
    """No n×n gradient GEMM unless k needs a gradient; the λ sum only when λ does; the
    gradients that are formed equal those of a call where everything needs one."""
    rs = importlib.import_module("fastamort.ops.ridge_solve")  # the name is also the op's
    calls = []
    real = rs.k_and_lam_grads

    def spy(grad_b, x, need_k, need_lam, *backend):
        calls.append((need_k, need_lam))
        return real(grad_b, x, need_k, need_lam, *backend)

    monkeypatch.setattr(rs, "k_and_lam_grads", spy)
    k = spd((), 9, torch.float64, device)
    b = _rhs((9, 2), torch.float64, device)
    lam = torch.tensor(0.3, dtype=torch.float64, device=device)
    inputs = {"k": k, "b": b, "lam": lam}
    full = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    (ridge_solve(full["k"], full["b"], full["lam"], backend=backend) ** 2).sum().backward()
    one = {n: t.clone().requires_grad_(n == wants) for n, t in inputs.items()}
    (ridge_solve(one["k"], one["b"], one["lam"], backend=backend) ** 2).sum().backward()
    assert calls == [(True, True), (wants == "k", wants == "lam")]
    for name, t in one.items():
        if name == wants:
            torch.testing.assert_close(t.grad, full[name].grad)
        else:
            assert t.grad is None


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((torch.eye(3), torch.ones(4, 1), 1.0), ValueError, "b: expected shape"),
        ((torch.ones(3, 4), torch.ones(3, 1), 1.0), ValueError, "k: expected square"),
        ((torch.eye(3), torch.ones(3, 1), -1.0), ValueError, "lam: must be >= 0"),
        ((torch.eye(3), torch.ones(3, 1), float("nan")), ValueError, "lam: contains NaN"),
        ((torch.eye(3), torch.ones(3, 1).double(), 1.0), TypeError, "b: dtype"),
        ((torch.eye(3, dtype=torch.int64), torch.ones(3, 1), 1.0), TypeError, "k: expected dtype"),
        ((torch.eye(3), torch.ones(3, 1), "1"), TypeError, "lam: expected a float"),
        ((torch.eye(3), torch.full((3, 1), float("inf")), 1.0), ValueError, "b: contains NaN"),
        ((torch.eye(3).expand(3, 3, 3), torch.ones(3, 3, 1), torch.ones(2)), ValueError, "batch"),
    ],
)
def test_bad_input_names_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        ridge_solve(*args)
