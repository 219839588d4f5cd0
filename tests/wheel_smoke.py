"""Smoke test of an installed fastamort wheel (run by tests/test_wheel.py and cibuildwheel).

Run it with the Python of the environment that holds the wheel, from a folder outside the
source tree::

    python tests/wheel_smoke.py [--expect-prefix PREFIX] [--out DIR]

Checks: fastamort is imported from the installed wheel (under PREFIX when given), the C++
backend is available, ``gram`` and ``ridge_solve`` on the cpp backend match the pure-PyTorch
reference, ``fastamort info`` reports the cpp backend, and ``fastamort demo --quick`` runs
and writes its metrics. Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _command(name: str) -> list[str]:
    """The console script installed beside this interpreter (else ``python -m fastamort``)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", "fastamort"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-prefix", help="fastamort must be imported from under this path")
    parser.add_argument("--out", help="output folder of the demo (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    import fastamort
    from fastamort._backends import cpp_unavailable_reason

    where = Path(fastamort.__file__).resolve()
    print(f"fastamort {fastamort.__version__} from {where}")
    if args.expect_prefix is not None:
        prefix = Path(args.expect_prefix).resolve()
        assert prefix in where.parents, f"fastamort imported from {where}, not under {prefix}"
    reason = cpp_unavailable_reason()
    assert reason is None, f"the cpp backend is not available: {reason}"
    from fastamort import _C

    assert Path(_C.__file__).resolve().parent == where.parent, _C.__file__

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(70, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    ell = 1.3
    ref = torch.exp(-0.5 * torch.cdist(x, y).square() / ell**2)
    with fastamort.record_backends() as ran:
        k = fastamort.gram(x, y, lengthscale=ell, backend="cpp")
    assert ran == [("gram", "cpp")], ran
    err = float((k - ref).abs().max())
    assert err < 1e-12, f"gram (cpp) differs from the torch reference by {err:.3g}"
    kxx = fastamort.gram(x, lengthscale=ell, backend="cpp")
    b = torch.randn(70, 2, generator=gen, dtype=torch.float64)
    sol = fastamort.ridge_solve(kxx, b, 0.1, backend="cpp")
    sol_ref = torch.linalg.solve(kxx + 0.1 * torch.eye(70, dtype=torch.float64), b)
    err = float((sol - sol_ref).abs().max())
    assert err < 1e-8, f"ridge_solve (cpp) differs from torch.linalg.solve by {err:.3g}"
    print(f"gram and ridge_solve on the cpp backend match the reference ({_C.simd_isa()})")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTAMORT_BACKEND")}
    info = subprocess.run(
        [*_command("fastamort"), "info"], capture_output=True, text=True, env=env, check=True
    ).stdout
    print(info)
    assert any(line.split()[:2] == ["cpp", "available"] for line in info.splitlines()), info

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "demo"
        demo = subprocess.run(
            [*_command("fastamort"), "demo", "--quick", "--no-progress", "--out", str(out)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        print(demo.stdout[-2000:])
        assert demo.returncode == 0, f"fastamort demo failed:\n{demo.stderr[-4000:]}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["backends"] == ["cpp"], metrics["backends"]
        ll = metrics["log_likelihood"]
        assert ll["learned"]["train"] > ll["initial"]["train"], ll
    print("wheel smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
