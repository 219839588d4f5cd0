"""Build script: the pybind11 CPU extension fastamort._C.

Environment:
    FASTAMORT_NO_EXT=1   build a pure-Python package (the torch backend only).
    FASTAMORT_DEBUG=1    build the extension with -O0 -g.
    FASTAMORT_BUILD_JOBS compile the C++ sources with this many parallel jobs (default: all CPUs).

The extension links no BLAS (and no libtorch, no CUDA): it takes SciPy's BLAS/LAPACK through
the capsules of scipy.linalg.cython_blas at import time. Flags are portable: no -march, so the
compiler's baseline ISA of the target (x86-64 with SSE2, or armv8-a); the hot element-wise
loops and the batched small Cholesky are also compiled for AVX2+FMA (GCC target attributes,
x86-64 only) and chosen at run time from the CPU's features (``fastamort._C.simd_isa()``).
So one wheel per Python and platform runs on any CPU of that platform.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _version() -> str:
    """``__version__`` of fastamort/_version.py (read, not imported: importing the package
    needs torch, which a build environment need not have)."""
    tree = ast.parse((ROOT / "fastamort" / "_version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("fastamort/_version.py does not set __version__")


VERSION = _version()


def _extensions() -> list:
    if os.environ.get("FASTAMORT_NO_EXT", "0") not in ("", "0"):
        return []
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    # Headers too: an edited header must rebuild the extension (setuptools compares times).
    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.hpp"))
    debug = os.environ.get("FASTAMORT_DEBUG", "0") not in ("", "0")
    compile_args = ["-O0", "-g"] if debug else ["-O3"]
    compile_args += [
        "-fopenmp",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wall",
        "-Wno-unknown-pragmas",
    ]
    link_args = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang: OpenMP through libomp if present
        compile_args = [a for a in compile_args if a != "-fopenmp"] + ["-Xpreprocessor", "-fopenmp"]
        link_args = ["-lomp"]
    return [
        Pybind11Extension(
            "fastamort._C",
            sources,
            depends=headers,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["dl"] if sys.platform.startswith("linux") else [],
            define_macros=[("FASTAMORT_VERSION", f'"{VERSION}"')],
        )
    ]


def _cmdclass() -> dict:
    if os.environ.get("FASTAMORT_NO_EXT", "0") not in ("", "0"):
        return {}
    from pybind11.setup_helpers import ParallelCompile, build_ext

    ParallelCompile("FASTAMORT_BUILD_JOBS").install()  # the sources compile independently
    return {"build_ext": build_ext}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
