"""Packaging: the sdist builds from source, the CPU wheel installs and runs away from the tree.

The source tree is copied first (without build outputs or the in-place extension), so the
builds here never touch the checkout. The expensive path is one test (one compile, about a
minute on 2 cores): sdist -> ``pip wheel . --no-deps --no-build-isolation`` from the unpacked
sdist -> install into a fresh virtual environment -> ``tests/wheel_smoke.py`` run from a
temporary folder (cpp backend available, Gram and ridge solve against the torch reference,
``fastamort info``, ``fastamort demo --quick``).

The fresh environment gets the wheel only (installed by this interpreter's pip, ``--python``,
pip >= 22.3); torch, NumPy, SciPy and tqdm come from the running interpreter's site-packages
through a ``.pth`` path entry (after the venv's own site-packages, and without running the
host's ``.pth`` hooks, so an editable install of the checkout stays invisible). The smoke test
asserts that fastamort and its ``_C`` are imported from the venv.

The builds run without build isolation (no network): the build requirements, setuptools >= 77
and pybind11, come with the ``test`` extra (tests/test_packaging.py checks that they do).
"""

from __future__ import annotations

import email.message
import email.parser
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fastamort

ROOT = Path(__file__).resolve().parent.parent
SMOKE = Path(__file__).resolve().parent / "wheel_smoke.py"
IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyd", ".pytest_cache",
    ".ruff_cache", ".benchmarks", ".venv", ".ci-venv", ".whl", ".gl", "fastamort-demo", "tmp",
)  # fmt: skip
BUILD_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTAMORT_NO_EXT")}
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or _env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def _copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    return dest


def _sdist(tmp: Path) -> Path:
    src = _copy_tree(tmp / "src")
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", tmp / "sdist"], cwd=src)
    (path,) = (tmp / "sdist").glob("fastamort-*.tar.gz")
    return path


def _wheel_from(src: Path, out: Path, **env: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
           "-w", out]  # fmt: skip
    _run(cmd, cwd=src, env=_env(**env), timeout=BUILD_TIMEOUT_S)
    (path,) = out.glob("fastamort-*.whl")
    return path


def _metadata(whl: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(whl.read(name).decode())


def _requires_dist(whl: zipfile.ZipFile) -> list[str]:
    return _metadata(whl).get_all("Requires-Dist") or []


def _host_paths() -> list[str]:
    """Where the running interpreter finds torch and the other runtime dependencies."""
    import numpy
    import scipy
    import torch
    import tqdm

    paths = [str(Path(m.__file__).resolve().parent.parent) for m in (torch, numpy, scipy, tqdm)]
    paths += site.getsitepackages()
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


def test_sdist_has_everything_the_build_needs(tmp_path):
    sdist = _sdist(tmp_path)
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = {f"csrc/{p.name}" for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".hpp")}
    assert sources <= names, f"missing from the sdist: {sorted(sources - names)}"
    assert {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"} <= names
    assert "fastamort/__init__.py" in names and "fastamort/demo.py" in names
    assert {"fastamort/_version.py", "fastamort/py.typed"} <= names
    assert sdist.name == f"fastamort-{fastamort.__version__}.tar.gz"
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]


def test_cpu_wheel_builds_installs_and_runs_away_from_the_source_tree(tmp_path):
    # sdist -> unpacked -> pip wheel: the wheel is built from the sdist, so the sdist builds.
    sdist = _sdist(tmp_path)
    with tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.10.12+
        tar.extractall(tmp_path / "unpacked", **safe)
    (src,) = (tmp_path / "unpacked").iterdir()
    wheel = _wheel_from(src, tmp_path / "wheelhouse")

    assert re.search(r"-cp3\d+-cp3\d+-linux_(x86_64|aarch64)\.whl$", wheel.name) or (
        not sys.platform.startswith("linux")
    ), wheel.name
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        requires = _requires_dist(whl)
        ext = [n for n in names if re.fullmatch(r"fastamort/_C\.[^/]*(\.so|\.pyd)", n)]
        assert len(ext) == 1, f"the wheel has no compiled fastamort._C: {names}"
        assert "fastamort/demo.py" in names and "fastamort/cli.py" in names
        assert "fastamort/py.typed" in names  # type information for users' checkers
        assert _metadata(whl)["Version"] == fastamort.__version__
        assert not [n for n in names if n.startswith(("csrc/", "tests/", "bench/"))]
        so = tmp_path / "ext" / Path(ext[0]).name
        so.parent.mkdir()
        so.write_bytes(whl.read(ext[0]))
    # README says about 0.6 MB (measured; the extension is not stripped): fail past 1 MB.
    assert wheel.stat().st_size < 1_000_000, f"{wheel.name}: {wheel.stat().st_size} bytes"
    # Triton and anything CUDA only ever behind an extra (fastamort[gpu]).
    core = [r for r in requires if "extra ==" not in r]
    assert {re.split(r"[<>=!~ ;\[]", r)[0] for r in core} == {"torch", "numpy", "scipy", "tqdm"}
    assert not [r for r in core if re.search(r"triton|nvidia|cuda", r, re.I)], core
    assert any(r.startswith("triton") and 'extra == "gpu"' in r for r in requires), requires
    readelf = shutil.which("readelf")
    if readelf is not None:  # no libtorch, no CUDA runtime linked into the extension
        needed = subprocess.run([readelf, "-d", so], capture_output=True, text=True).stdout
        libs = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", needed)
        assert libs and not [lib for lib in libs if re.search(r"torch|cuda|c10", lib)], libs

    # A fresh virtual environment holding only the wheel; the dependencies come from the host.
    # (--without-pip: no ensurepip needed; this interpreter's pip installs into it.)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "--quiet", wheel], cwd=tmp_path)  # fmt: skip
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip()  # fmt: skip
    Path(purelib, "_fastamort_test_host.pth").write_text("\n".join(_host_paths()) + "\n")

    away = tmp_path / "elsewhere"
    away.mkdir()
    proc = _run([py, SMOKE, "--expect-prefix", venv, "--out", away], cwd=away, timeout=600)
    assert "wheel smoke test passed" in proc.stdout
    assert (away / "demo" / "metrics.json").exists()


def test_no_ext_builds_a_pure_python_wheel(tmp_path):
    src = _copy_tree(tmp_path / "src")
    wheel = _wheel_from(src, tmp_path / "wheelhouse", FASTAMORT_NO_EXT="1")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        assert not [n for n in names if n.endswith((".so", ".pyd"))], names
        whl.extractall(tmp_path / "site")
    code = (
        "import fastamort, torch; from fastamort._backends import cpp_unavailable_reason as r; "
        "print(fastamort.__file__); print(r()); "
        "x = torch.randn(5, 2); "
        "print(float((fastamort.gram(x) - fastamort.gram(x, backend='torch')).abs().max()))"
    )
    # -S: no site hooks, so an editable install of the checkout cannot lend its fastamort._C
    path = os.pathsep.join([str(tmp_path / "site"), *_host_paths()])
    out = _run([sys.executable, "-S", "-c", code], cwd=tmp_path,
               env=_env(PYTHONPATH=path)).stdout.splitlines()  # fmt: skip
    assert Path(out[0]).resolve().is_relative_to((tmp_path / "site").resolve()), out
    assert out[1] != "None", "the pure-Python wheel reports a C++ extension"
    assert float(out[2]) == 0.0
