"""The C++ extension's BLAS thread guard under concurrent callers.

The kernels call SciPy's OpenBLAS from inside their own OpenMP regions, with the BLAS set to
one thread while they run (``blas::SingleThreaded``). OpenBLAS's thread count is process-wide,
so concurrent Python threads (the extension releases the GIL) must not restore a multi-thread
count while another caller is still inside an OpenMP region: OpenBLAS would then print
"OpenBLAS Warning: Detect OpenMP Loop and this application may hang" (and may hang).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastamort._backends import cpp_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(cpp_unavailable_reason() is not None, reason="no C++ extension")

# Four Python threads, each alternating Gram matrices (BLAS GEMM per tile inside OpenMP) and
# ridge solves (tiled Cholesky with BLAS per task), checked against the torch reference.
SCRIPT = textwrap.dedent(
    """
    import threading, torch, fastamort
    from fastamort import _C

    if "thread control" not in _C.blas_source() or "no thread control" in _C.blas_source():
        print("NO-THREAD-CONTROL")
        raise SystemExit(0)
    before = _C.blas_num_threads()
    torch.manual_seed(0)
    n = 300
    xs = [torch.randn(n, 16 + 8 * i, dtype=torch.float64) for i in range(4)]
    grams = [fastamort.gram(x, backend="torch") for x in xs]
    rhs = torch.randn(n, 3, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    solutions = [torch.linalg.solve(k + 0.1 * eye, rhs) for k in grams]
    errors, failures = [], []

    def work(i):
        try:
            for _ in range(40):
                k = fastamort.gram(xs[i], backend="cpp")
                s = fastamort.ridge_solve(grams[i], rhs, 0.1, backend="cpp")
                errors.append(float((k - grams[i]).abs().max()))
                errors.append(float(((s - solutions[i]).abs().max() / solutions[i].abs().max())))
        except BaseException as err:  # reported below: a thread's exception is otherwise lost
            failures.append(repr(err))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("FAILURES", failures)
    print("MAXERR", max(errors))
    print("THREADS", before, _C.blas_num_threads())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["auto", "scipy"])
def test_concurrent_python_threads_keep_the_blas_single_threaded_inside_openmp(provider):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",)}
    env["FASTAMORT_BLAS"] = provider
    # Two OpenMP threads and a two-thread BLAS, whatever the machine's core count.
    env.update(OMP_NUM_THREADS="2", SCIPY_OPENBLAS_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if "NO-THREAD-CONTROL" in proc.stdout:
        pytest.skip("the BLAS exposes no thread control")
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["FAILURES"] == "[]", lines["FAILURES"]
    assert float(lines["MAXERR"]) < 1e-9, proc.stdout
    before, after = lines["THREADS"].split()
    assert int(before) == 2 and after == before, "the BLAS thread count was not restored"
    warnings = [line for line in proc.stderr.splitlines() if "OpenBLAS Warning" in line]
    assert not warnings, f"{len(warnings)} OpenBLAS warnings, first: {warnings[0]}"


# The same engine calls under both BLAS providers (torch's MKL where torch has it, SciPy's
# OpenBLAS): gram (GEMM + SYRK route, D > 64), gram_matmul, a large ridge solve (tiled
# Cholesky with GEMM/TRSM tasks) and its backward.
PROVIDER_SCRIPT = textwrap.dedent(
    """
    import sys, torch, fastamort
    from fastamort import _C
    torch.manual_seed(0)
    x = torch.randn(700, 100, dtype=torch.float64)
    v = torch.randn(700, 3, dtype=torch.float64)
    k = fastamort.gram(x, lengthscale=10.0, backend="cpp")
    kv = fastamort.gram_matmul(x[:50], x, v, lengthscale=10.0, backend="cpp")
    kk = k.clone().requires_grad_(True)
    sol = fastamort.ridge_solve(kk, v, 1e-3, backend="cpp")
    sol.square().sum().backward()
    torch.save({"k": k, "kv": kv, "sol": sol.detach(), "grad": kk.grad}, sys.argv[1])
    print(_C.blas_source())
    """
)


def test_both_blas_providers_give_the_same_results(tmp_path):
    results, sources = {}, {}
    for provider in ("auto", "scipy"):
        env = dict(os.environ, FASTAMORT_BLAS=provider)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        out = tmp_path / f"{provider}.pt"
        proc = subprocess.run(
            [sys.executable, "-c", PROVIDER_SCRIPT, str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[provider], sources[provider] = torch.load(out), proc.stdout.strip()
    assert "MKL" not in sources["scipy"], sources["scipy"]
    for name, ref in results["scipy"].items():
        got = results["auto"][name]
        scale = ref.abs().max()
        assert float((got - ref).abs().max() / scale) < 1e-10, name
