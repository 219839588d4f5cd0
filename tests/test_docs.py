"""docs/ cannot rot: the API reference mirrors the docstrings, and every example runs."""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import pytest

import fastamort

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC = [n for n in fastamort.__all__ if n != "__version__"]


def _gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_covers_every_public_name():
    text = (DOCS / "api.md").read_text()
    missing = [n for n in PUBLIC if f"### `fastamort.{n}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}: run `python docs/gen_api.py`"


def test_api_reference_is_generated_from_the_current_docstrings():
    assert (DOCS / "api.md").read_text() == _gen_api().render(), (
        "docs/api.md is out of date with the docstrings: run `python docs/gen_api.py`"
    )


def _doctests():
    finder = doctest.DocTestFinder(recurse=False)
    out = []
    for name in PUBLIC:
        obj = getattr(fastamort, name)
        if isinstance(obj, (tuple, str)):
            continue
        out += [t for t in finder.find(obj, f"fastamort.{name}", globs={}) if t.examples]
        if isinstance(obj, type):  # methods' examples too
            for attr, value in vars(obj).items():
                if callable(value) and not attr.startswith("_"):
                    found = finder.find(value, f"fastamort.{name}.{attr}", globs={})
                    out += [t for t in found if t.examples]
    return out


DOCTESTS = _doctests()


def test_public_names_have_examples():
    with_examples = {t.name.split(".")[1] for t in DOCTESTS}
    for name in ("gram", "gram_matmul", "ridge_solve", "cholesky", "kernel_ridge_batched",
                 "AmortisedLearner", "KernelRidge"):  # fmt: skip
        assert name in with_examples, f"fastamort.{name} has no docstring example"


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example_runs(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=lambda s: print(s, end=""))
    assert result.failed == 0, f"{test.name}: {result.failed} example(s) failed (output above)"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_python_blocks_run(page):
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    for i, code in enumerate(blocks):  # in order, one namespace per page (as a reader would)
        exec(compile(code, f"docs/{page} block {i}", "exec"), namespace)


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
)
def test_relative_links_resolve(page):
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links to missing {target}"
