"""Portable build: the extension builds with clang and without OpenMP, and it is optional.

The expensive test compiles the extension once more, out of tree (``setup.py build_ext
-b <tmp>``, nothing in the checkout is written), with ``CC=clang CXX=clang++`` and
``FASTAMORT_NO_OPENMP=1``: one build shows both the second compiler and the OpenMP-free
sources (about a minute on 2 cores with FASTAMORT_BUILD_JOBS=2). The built library is
imported in a subprocess, next to a copy of the Python package, and checked on the cpp backend
against the references. The main build of the test run is the GCC + OpenMP configuration.

The optional-extension tests make the compile fail at once (a compiler that does not exist),
so they cost seconds.

The portable build (``FASTAMORT_PORTABLE=1``, ``-DFASTAMORT_PORTABLE``) compiles the code path
of a compiler without the GCC/clang extensions, the one MSVC takes on Windows (csrc/
portability.hpp): no vector types (one-lane scalar micro-kernels), no AVX2 copies or run-time
ISA dispatch, OpenMP 2.0 constructs only (one potrf call instead of the task-based tiled
Cholesky). It is built with the default compiler (GCC) and OpenMP, as MSVC builds, at -O0
(FASTAMORT_DEBUG=1: the sources are what it tests, not the optimiser; the build took 56 s on
the idle 2-core dev machine), and checked against the references the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 900

pytestmark = pytest.mark.slow

# Run in the subprocess against the out-of-tree build: the cpp backend really runs (explicit
# backend="cpp", and fastamort._C is the library under test), compared with the references.
CHECKS = r"""
import sys
import torch
import fastamort
from fastamort import _C
from fastamort.ops.normal_matmul import normal_matmul

expected_dir, compiler, openmp, portable = sys.argv[1:5]
assert _C.__file__.startswith(expected_dir), f"_C imported from {_C.__file__}"
info = _C.BUILD_INFO
assert info["compiler"].startswith(compiler), info
assert (info["openmp"] > 0) == (openmp == "on"), info
assert info["portable"] == (portable == "portable"), info
_C.set_num_threads(2)
assert _C.num_threads() == (2 if openmp == "on" else 1), _C.num_threads()
if info["portable"]:  # MSVC's path: scalar micro-kernels, the baseline ISA only
    assert not info["vector_extensions"] and info["isa"] == ["baseline"], info
    assert _C.simd_isa() == "baseline", _C.simd_isa()
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
    x = torch.randn(37, 5, dtype=dtype)
    y = torch.randn(17, 5, dtype=dtype)
    for kernel in ("gaussian", "laplacian", "matern52"):
        got = fastamort.gram(x, y, kernel=kernel, lengthscale=1.3, backend="cpp")
        ref = fastamort.gram(x, y, kernel=kernel, lengthscale=1.3, backend="torch")
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    # the tiled routes of the Gram engine (M·N·D past 2^20; the GEMM route at D = 40)
    for d in (5, 40):
        x = torch.randn(300, d, dtype=dtype)
        y = torch.randn(700, d, dtype=dtype)
        got = fastamort.gram(x, y, kernel="matern32", backend="cpp")
        ref = fastamort.gram(x, y, kernel="matern32", backend="torch")
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        v = torch.randn(700, 3, dtype=dtype)
        got = fastamort.gram_matmul(x, y, v, backend="cpp")
        want = fastamort.gram(x, y, backend="torch") @ v
        torch.testing.assert_close(got, want, rtol=100 * tol, atol=100 * tol)
    for n in (7, 37, 300):  # own lane kernels, and the LAPACK route (tiled from n = 192)
        k = fastamort.gram(torch.randn(n, 3, dtype=dtype), kernel="gaussian", backend="torch")
        b = torch.randn(n, 4, dtype=dtype)
        got = fastamort.ridge_solve(k, b, 0.1, backend="cpp")
        ref = torch.linalg.solve(k + 0.1 * torch.eye(n, dtype=dtype), b)
        torch.testing.assert_close(got, ref, rtol=100 * tol, atol=100 * tol)
    x = torch.randn(9, 16, 2, dtype=dtype)  # fused kernel ridge
    yb = torch.randn(9, 16, 2, dtype=dtype)
    got = fastamort.kernel_ridge_batched(x, yb, 0.1, x_new=x[:, :5], backend="cpp")
    ref = fastamort.kernel_ridge_batched(x, yb, 0.1, x_new=x[:, :5], backend="torch")
    torch.testing.assert_close(got.prediction, ref.prediction, rtol=100 * tol, atol=100 * tol)
    x = torch.randn(500, 3, dtype=dtype)  # Nyström normal-equation products
    c = torch.randn(40, 3, dtype=dtype)
    v = torch.randn(40, 2, dtype=torch.float64)
    yn = torch.randn(500, 2, dtype=dtype)
    for kernel in ("gaussian", "laplacian"):
        got, ref = (
            normal_matmul(x, c, v, y=yn, kernel=kernel, backend=name)
            for name in ("cpp", "torch")
        )
        torch.testing.assert_close(got, ref, rtol=100 * tol, atol=100 * tol)
print("isa", _C.simd_isa())
"""


def _env(**extra: str) -> dict[str, str]:
    drop = (
        "PYTHONPATH",
        "FASTAMORT_NO_EXT",
        "FASTAMORT_REQUIRE_EXT",
        "FASTAMORT_NO_OPENMP",
        "FASTAMORT_PORTABLE",
        "FASTAMORT_DEBUG",
        "CC",
        "CXX",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def _build_ext(tmp: Path, timeout: float = BUILD_TIMEOUT_S, **env: str):
    """``setup.py build_ext`` of the checkout into tmp/lib (objects in tmp/obj)."""
    cmd = [sys.executable, "setup.py", "build_ext", "-b", tmp / "lib", "-t", tmp / "obj"]
    return subprocess.run(
        [str(c) for c in cmd], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _failure(proc) -> str:
    return f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _run_checks(tmp: Path, compiler: str, openmp: str, portable: str):
    """CHECKS in a subprocess against the library built into tmp/lib, with the Python
    package copied next to it (the checkout's in-place build left out)."""
    lib = tmp / "lib"
    shutil.copytree(
        ROOT / "fastamort", lib / "fastamort", dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", CHECKS, str(lib), compiler, openmp, portable], cwd=tmp,
        env=_env(PYTHONPATH=str(lib)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


NO_CLANG = "clang++ not found (Debian: apt-get install clang; .ci/run installs it)"


@pytest.mark.skipif(shutil.which("clang++") is None, reason=NO_CLANG)
def test_the_extension_builds_with_clang_and_without_openmp(tmp_path):
    proc = _build_ext(
        tmp_path, CC="clang", CXX="clang++", FASTAMORT_NO_OPENMP="1", FASTAMORT_REQUIRE_EXT="1",
        FASTAMORT_BUILD_JOBS="2",
    )  # fmt: skip
    assert proc.returncode == 0, _failure(proc)
    assert "clang: OpenMP off (FASTAMORT_NO_OPENMP=1)" in proc.stdout, _failure(proc)
    assert "-fopenmp" not in proc.stdout, "an OpenMP flag reached the compiler"
    (so,) = (tmp_path / "lib" / "fastamort").glob("_C.*")
    run = _run_checks(tmp_path, "clang", "off", "native")
    assert run.returncode == 0, _failure(run)
    if "isa avx2+fma" in run.stdout:  # the AVX2 kernels must really be AVX2 code under clang
        from test_isa import avx_outside_avx2_kernels, disassembly

        if shutil.which("objdump") is not None:
            listing = disassembly(str(so))
            assert "vfmadd" in listing, "clang compiled the AVX2 kernels without AVX2"
            assert not avx_outside_avx2_kernels(listing)


def test_the_portable_code_path_builds_and_runs(tmp_path):
    """-DFASTAMORT_PORTABLE with GCC and OpenMP: MSVC's code path (module docstring)."""
    proc = _build_ext(
        tmp_path, FASTAMORT_PORTABLE="1", FASTAMORT_DEBUG="1", FASTAMORT_REQUIRE_EXT="1",
        FASTAMORT_BUILD_JOBS="2",
    )  # fmt: skip
    assert proc.returncode == 0, _failure(proc)
    assert "-DFASTAMORT_PORTABLE" in proc.stdout, _failure(proc)
    run = _run_checks(tmp_path, "", "on", "portable")  # the default compiler (GCC here)
    assert run.returncode == 0, _failure(run)
    assert "isa baseline" in run.stdout, run.stdout


def test_a_failed_compile_installs_without_the_extension(tmp_path):
    proc = _build_ext(tmp_path, timeout=300, CC="fastamort-no-such-cc", CXX="fastamort-no-such-cc")
    assert proc.returncode == 0, _failure(proc)
    assert "building the C++ extension fastamort._C failed" in proc.stderr, _failure(proc)
    assert "FASTAMORT_REQUIRE_EXT=1" in proc.stderr
    assert not list(tmp_path.rglob("_C.*")), "a library was written"


def test_require_ext_makes_a_failed_compile_fatal(tmp_path):
    proc = _build_ext(
        tmp_path, timeout=300, CC="fastamort-no-such-cc", CXX="fastamort-no-such-cc",
        FASTAMORT_REQUIRE_EXT="1",
    )  # fmt: skip
    assert proc.returncode != 0, _failure(proc)
    assert "building the C++ extension fastamort._C failed" not in proc.stderr


def test_info_says_why_the_cpp_backend_is_missing():
    code = (
        "import sys; sys.modules['fastamort._C'] = None\n"  # as if the compile had failed
        "from fastamort.cli import info_text; print(info_text())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, _failure(run)
    (line,) = [ln for ln in run.stdout.splitlines() if ln.strip().startswith("cpp")]
    assert "not installed" in line and "compile failed" in line, line
    assert "FASTAMORT_REQUIRE_EXT=1" in line and "pip install -v" in line, line
    assert "cpp build:" not in run.stdout
