"""Build script: the pybind11 CPU extension fastamort._C.

Environment:
    FASTAMORT_NO_EXT=1   build a pure-Python package (the torch backend only).
    FASTAMORT_DEBUG=1    build the extension with -O0 -g.

The extension links no BLAS: it takes SciPy's BLAS/LAPACK through the capsules of
scipy.linalg.cython_blas at import time. Flags are portable (baseline ISA of the target);
the hot element-wise loops are also compiled for AVX2+FMA and chosen at run time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = "0.1.0"


def _extensions() -> list:
    if os.environ.get("FASTAMORT_NO_EXT", "0") not in ("", "0"):
        return []
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    debug = os.environ.get("FASTAMORT_DEBUG", "0") not in ("", "0")
    compile_args = ["-O0", "-g"] if debug else ["-O3"]
    compile_args += ["-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
    link_args = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang: OpenMP through libomp if present
        compile_args = [a for a in compile_args if a != "-fopenmp"] + ["-Xpreprocessor", "-fopenmp"]
        link_args = ["-lomp"]
    return [
        Pybind11Extension(
            "fastamort._C",
            sources,
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
    from pybind11.setup_helpers import build_ext

    return {"build_ext": build_ext}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
