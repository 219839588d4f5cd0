"""Packaging hygiene: one version source, ``fastamort --version``, ``py.typed``, build and test
requirements (the wheel itself is built in tests/test_wheel.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastamort
from fastamort.cli import main

ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(spec: str) -> tuple[str, str]:
    name = re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0]
    return name.lower(), spec[len(name) :].strip()


def _minimum(bound: str) -> tuple[int, ...]:
    m = re.fullmatch(r">=\s*([\d.]+)", bound)
    assert m, f"expected a '>=' lower bound, got {bound!r}"
    return tuple(int(p) for p in m.group(1).split("."))


def test_the_version_is_written_in_one_place():
    from fastamort._version import __version__

    assert fastamort.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?(\.dev\d+)?", __version__)
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "fastamort._version.__version__"}
    literal = re.compile(r"""(__version__|VERSION|version)\s*=\s*["']\d+\.\d+""")
    for path in [ROOT / "setup.py", ROOT / "pyproject.toml", *(ROOT / "fastamort").rglob("*.py")]:
        if path.name != "_version.py":
            assert not literal.search(path.read_text()), f"a version literal in {path}"


def test_the_extension_reports_the_same_version():
    _C = pytest.importorskip("fastamort._C")
    assert _C.__version__ == fastamort.__version__


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastamort {fastamort.__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "fastamort", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"fastamort {fastamort.__version__}"


def test_the_package_is_marked_typed():
    assert (ROOT / "fastamort" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["fastamort"]


def test_setuptools_is_recent_enough_for_the_license_string():
    # `license = "MIT"` (an SPDX expression, PEP 639) is read from setuptools 77 on; older
    # ones reject the file ("project.license must be valid exactly by one definition").
    assert isinstance(PYPROJECT["project"]["license"], str)
    requires = dict(_requirement(r) for r in PYPROJECT["build-system"]["requires"])
    assert _minimum(requires["setuptools"]) >= (77,)


def test_the_test_extra_can_build_without_isolation():
    # tests/test_wheel.py builds the sdist (setup.py sdist) and wheels with
    # --no-build-isolation: a fresh `pip install -e ".[test]"` must bring what that needs.
    build = dict(_requirement(r) for r in PYPROJECT["build-system"]["requires"])
    test = dict(_requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"])
    for name, bound in build.items():
        assert name in test, f"the test extra lacks the build requirement {name}"
        assert _minimum(test[name]) >= _minimum(bound), (name, test[name], bound)
