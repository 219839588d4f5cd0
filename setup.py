"""Build script: the pybind11 CPU extension fastamort._C (optional).

Environment:
    FASTAMORT_NO_EXT=1      build a pure-Python package (the torch backend only).
    FASTAMORT_REQUIRE_EXT=1 a failed compile of the extension fails the build (CI, wheels);
                            without it the failure is reported and the pure-Python package is
                            installed (the torch and Triton backends; `fastamort info` says why
                            the cpp backend is missing).
    FASTAMORT_NO_OPENMP=1   compile without OpenMP (every kernel runs on one thread).
    FASTAMORT_PORTABLE=1    with GCC or clang, compile the code path of a compiler without their
                            extensions (MSVC's): no vector types, no AVX2 dispatch, OpenMP 2.0
                            constructs only (csrc/portability.hpp; tests/test_build.py).
    FASTAMORT_DEBUG=1       build the extension with -O0 -g (/Od /Zi on MSVC).
    FASTAMORT_BUILD_JOBS    parallel compile jobs for the C++ sources (default: all CPUs).

Compilers: GCC and clang (-O3 -fopenmp), Apple clang (OpenMP from Homebrew's libomp, found
through ``brew --prefix libomp`` or $FASTAMORT_LIBOMP_PREFIX, else OpenMP off with a warning),
MSVC (/O2 /openmp:experimental: OpenMP 2.0 plus its `omp simd`; csrc/portability.hpp keeps
MSVC off the GCC/clang extensions and the OpenMP 4.0 constructs). With GCC or clang, OpenMP
is probed first: a compiler without it (clang without libomp) builds the extension without
OpenMP and says so.

The extension links no BLAS (and no libtorch, no CUDA): it takes SciPy's BLAS/LAPACK through
the capsules of scipy.linalg.cython_blas at import time. Flags are portable: no -march, so the
compiler's baseline ISA of the target (x86-64 with SSE2, or armv8-a); the hot element-wise
loops and the batched small Cholesky are also compiled for AVX2+FMA (GCC/clang target
attributes, x86-64 only; MSVC builds the baseline kernels only) and chosen at run time from the
CPU's features (``fastamort._C.simd_isa()``). So one wheel per Python and platform runs on any
CPU of that platform.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
EXT_NAME = "fastamort._C"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _version() -> str:
    """``__version__`` of fastamort/_version.py (read, not imported: importing the package
    needs torch, which a build environment need not have)."""
    tree = ast.parse((ROOT / "fastamort" / "_version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("fastamort/_version.py does not set __version__")


VERSION = _version()


def _warn(message: str) -> None:
    print(f"\n*** fastamort setup.py: {message}\n", file=sys.stderr, flush=True)


def _extensions() -> list:
    if _flag("FASTAMORT_NO_EXT"):
        return []
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    # Headers too: an edited header must rebuild the extension (setuptools compares times).
    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.hpp"))
    return [
        Pybind11Extension(
            EXT_NAME,
            sources,
            depends=headers,
            include_dirs=["csrc"],
            cxx_std=17,
            libraries=["dl"] if sys.platform.startswith("linux") else [],
            define_macros=[
                ("FASTAMORT_VERSION", f'"{VERSION}"'),
                *([("FASTAMORT_PORTABLE", "1")] if _flag("FASTAMORT_PORTABLE") else []),
            ],
        )
    ]


def _compiler_family(compiler) -> str:
    """ "msvc", "apple-clang", "clang" or "gcc" (any other Unix compiler is treated as GCC)."""
    if compiler.compiler_type == "msvc":
        return "msvc"
    cxx = getattr(compiler, "compiler_so_cxx", None) or getattr(compiler, "compiler_so", None)
    cxx = cxx or ["c++"]
    try:
        out = subprocess.run(
            [*cxx[:1], "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    if "Apple clang" in out or (sys.platform == "darwin" and "clang" in out):
        return "apple-clang"
    return "clang" if "clang" in out else "gcc"


def _compiles(compiler, compile_args: list[str], link_args: list[str]) -> bool:
    """Whether a small OpenMP program compiles and links into a shared object with these flags."""
    source = "#include <omp.h>\nint fastamort_probe() { return omp_get_max_threads(); }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(source)
        try:
            objects = compiler.compile([str(src)], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_shared_object(
                objects, str(Path(tmp) / "probe.so"), extra_postargs=link_args
            )
        except Exception:
            return False
    return True


def _apple_libomp() -> tuple[list[str], list[str]] | None:
    """(compile, link) flags for Homebrew's libomp, or None when it is not installed."""
    prefix = os.environ.get("FASTAMORT_LIBOMP_PREFIX", "")
    if not prefix and shutil.which("brew"):
        proc = subprocess.run(
            ["brew", "--prefix", "libomp"], capture_output=True, text=True, timeout=120
        )
        prefix = proc.stdout.strip() if proc.returncode == 0 else ""
    if not prefix or not (Path(prefix) / "include" / "omp.h").is_file():
        return None
    return (
        ["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
        [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"],
    )


def _flags(compiler) -> tuple[list[str], list[str], str]:
    """(compile args, link args, a line describing the OpenMP choice) for this compiler."""
    family = _compiler_family(compiler)
    debug = _flag("FASTAMORT_DEBUG")
    want_openmp = not _flag("FASTAMORT_NO_OPENMP")
    if family == "msvc":
        compile_args = ["/Od", "/Zi"] if debug else ["/O2"]
        compile_args += ["/EHsc", "/bigobj"]
        if want_openmp:  # :experimental adds the `omp simd` directives to OpenMP 2.0
            return [*compile_args, "/openmp:experimental"], [], "msvc: OpenMP on (/openmp)"
        return compile_args, [], "msvc: OpenMP off (FASTAMORT_NO_OPENMP=1)"
    compile_args = ["-O0", "-g"] if debug else ["-O3"]
    compile_args += ["-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
    if not want_openmp:
        return compile_args, [], f"{family}: OpenMP off (FASTAMORT_NO_OPENMP=1)"
    if family == "apple-clang":
        omp = _apple_libomp()
        if omp is None:
            _warn(
                "Apple clang without libomp: the extension is built without OpenMP (one "
                "thread). `brew install libomp` (or FASTAMORT_LIBOMP_PREFIX) enables it."
            )
            return compile_args, [], "apple-clang: OpenMP off (libomp not found)"
        omp_compile, omp_link = omp
    else:
        omp_compile, omp_link = ["-fopenmp"], ["-fopenmp"]
    if not _compiles(compiler, omp_compile, omp_link):
        _warn(
            f"the compiler ({family}) cannot build with OpenMP ({' '.join(omp_compile)}): the "
            "extension is built without OpenMP (one thread). For clang on Linux install "
            "libomp (Debian: libomp-dev)."
        )
        return compile_args, [], f"{family}: OpenMP off (the OpenMP probe failed)"
    return [*compile_args, *omp_compile], omp_link, f"{family}: OpenMP on"


def _cmdclass() -> dict:
    if _flag("FASTAMORT_NO_EXT"):
        return {}
    from pybind11.setup_helpers import ParallelCompile, build_ext

    ParallelCompile("FASTAMORT_BUILD_JOBS").install()  # the sources compile independently

    class OptionalBuildExt(build_ext):
        """Per-compiler flags; a failed compile warns and leaves the pure-Python package,
        unless FASTAMORT_REQUIRE_EXT=1."""

        def build_extension(self, ext) -> None:
            try:
                compile_args, link_args, openmp = self._flags
            except AttributeError:
                compile_args, link_args, openmp = self._flags = _flags(self.compiler)
            print(f"fastamort setup.py: building {ext.name} with {openmp}", flush=True)
            ext.extra_compile_args = [*ext.extra_compile_args, *compile_args]
            ext.extra_link_args = [*ext.extra_link_args, *link_args]
            try:
                super().build_extension(ext)
            except Exception as exc:  # CompileError, LinkError, a missing compiler (OSError)
                if _flag("FASTAMORT_REQUIRE_EXT"):
                    raise
                _warn(
                    f"building the C++ extension {ext.name} failed ({type(exc).__name__}: "
                    f"{exc}). fastamort is installed without it: the torch backend (and "
                    "Triton on CUDA) still work; `fastamort info` reports the cpp backend as "
                    "unavailable. The compiler's messages are above; set "
                    "FASTAMORT_REQUIRE_EXT=1 to make this failure fatal."
                )

    return {"build_ext": OptionalBuildExt}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
