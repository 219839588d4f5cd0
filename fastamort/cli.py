"""Command line: ``fastamort info``, ``demo``, ``experiment <name>`` and ``bench <name>``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def info_text() -> str:
    """Versions, and which backends are available (or why not)."""
    import platform

    import numpy as np
    import torch

    import fastamort
    from fastamort._backends import backend_report, cpp_unavailable_reason

    lines = [
        f"fastamort {fastamort.__version__}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
        + ")",
        f"numpy {np.__version__}",
    ]
    try:
        import scipy

        lines.append(f"scipy {scipy.__version__}")
    except ImportError:
        lines.append("scipy not installed")
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except Exception:
        lines.append("triton not installed")
    lines.append("backends:")
    for name, status in backend_report().items():
        lines.append(f"  {name:7s} {status}")
    if cpp_unavailable_reason() is None:
        from fastamort import _C

        lines.append(
            f"cpp details: {_C.num_threads()} OpenMP threads, element-wise kernels for "
            f"{_C.simd_isa()}, BLAS/LAPACK from {_C.blas_source()}"
        )
        lines.append(f"cpp build: {build_text(getattr(_C, 'BUILD_INFO', {}))}")
        cache = _C.buffer_cache_info()
        lines.append(
            f"cpp buffer cache: up to {cache['limit_bytes'] >> 20} MiB of freed buffers kept "
            f"for reuse (FASTAMORT_BUFFER_CACHE_MB), {cache['cached_bytes'] >> 20} MiB now"
        )
    return "\n".join(lines)


#: _OPENMP (yyyymm of the specification) -> its version number.
_OPENMP_NAMES = {
    200203: "2.0", 200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0",
    201511: "4.5", 201811: "5.0", 202011: "5.1", 202111: "5.2",
}  # fmt: skip


def build_text(info: dict) -> str:
    """One line from ``fastamort._C.BUILD_INFO``: compiler, OpenMP, the kernel variants compiled."""
    if not info:
        return "not recorded by this build of the extension"
    version = int(info.get("openmp", 0))
    openmp = f"OpenMP {_OPENMP_NAMES.get(version, version)}" if version else "OpenMP off"
    parts = [str(info.get("compiler", "unknown compiler")), openmp]
    if "isa" in info:
        parts.append("kernels: " + ", ".join(info["isa"]))
    if info.get("portable"):
        parts.append("portable code path (FASTAMORT_PORTABLE: no vector extensions)")
    elif "vector_extensions" in info and not info["vector_extensions"]:
        parts.append("no vector extensions (scalar micro-kernels)")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    from fastamort._version import __version__

    parser = argparse.ArgumentParser(prog="fastamort", description="fastamort command line")
    parser.add_argument("--version", action="version", version=f"fastamort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and available backends")
    sub.add_parser(
        "demo",
        help="the main job: train factor analysis by amortised learning (see fastamort demo -h)",
        add_help=False,
    )
    sub.add_parser(
        "experiment",
        help="run one of the paper's experiments (fastamort experiment --list)",
        add_help=False,
    )
    bench = sub.add_parser("bench", help="run a benchmark", add_help=False)
    bench.add_argument("name", nargs="?", help="which benchmark (fastamort bench --list)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(info_text())
        return 0
    if args.command == "demo":
        from fastamort.demo import main as demo_main

        return int(demo_main(rest) or 0)
    if args.command == "experiment":
        from fastamort.experiments import main as experiment_main

        return int(experiment_main(rest, prog="fastamort experiment") or 0)
    from fastamort.benchmarks import BENCHMARKS

    if args.name is None:
        if "--list" in rest:
            print("\n".join(BENCHMARKS))
            return 0
        if "-h" in rest or "--help" in rest:
            print(
                "usage: fastamort bench {--list,NAME} [options]\n\n"
                f"benchmarks: {', '.join(BENCHMARKS)}\n"
                "options of one: fastamort bench NAME --help"
            )
            return 0
        parser.error(f"bench: name a benchmark: {', '.join(BENCHMARKS)}")
    if args.name not in BENCHMARKS:
        parser.error(f"unknown benchmark {args.name!r}; choose from {', '.join(BENCHMARKS)}")
    module = importlib.import_module(f"fastamort.benchmarks.{args.name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
