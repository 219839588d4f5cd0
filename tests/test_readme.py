"""README.md cannot rot: every code block is run or checked here.

* ```python blocks run as they are (each at most 10 lines: the README promises ten-line
  examples);
* ```bash blocks: every command is listed in SHELL below, either run here (cheap ones), or
  named by the test that covers it, or excluded with the reason; a new command without an
  entry fails;
* ```text blocks are output or a file tree, not code; the demo's printed metrics are checked
  against a real run by tests/test_demo.py::test_default_demo_closes_the_gap_to_the_mle;
* the benchmark table is regenerated from bench/results/*_cpu.json and must match.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text()
FENCED = re.findall(r"^```(\w*)\n(.*?)^```", TEXT, flags=re.S | re.M)
BLOCKS = [code for lang, code in FENCED if lang == "python"]
TEST_COMMAND = "TRITON_INTERPRET=1 python -m pytest -n 2 --maxschedchunk 1 -q"
SETUP_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && fastamort demo'
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

# command -> ("run", expected output fragment) | ("test", "tests/file.py::name") | ("skip", why)
SHELL = {
    "pip install torch==2.13.0": ("skip", "installs packages; .ci/run runs this install"),
    'pip install -e ".[test]"': ("skip", "installs packages; .ci/run runs this install"),
    "fastamort demo": ("test", "tests/test_demo.py::test_default_demo_closes_the_gap_to_the_mle"),
    TEST_COMMAND: ("skip", "the test suite itself; CI runs it from the line after the marker"),
    CPU_TORCH: ("skip", "installs torch from PyTorch's index (network); the set-up line's variant"),
    "fastamort bench gram --quick": ("run", "--quick"),  # run as --help: a timing run is ~1 min
    "pip wheel . --no-deps --no-build-isolation -w dist": (
        "test",
        "tests/test_wheel.py::test_cpu_wheel_builds_installs_and_runs_away_from_the_source_tree",
    ),
    "FASTAMORT_NO_EXT=1 pip wheel . --no-deps --no-build-isolation -w dist": (
        "test",
        "tests/test_wheel.py::test_no_ext_builds_a_pure_python_wheel",
    ),
    "python -m build": ("skip", "needs `build` and network access for its isolated build env"),
    "pipx run cibuildwheel --platform linux": ("skip", "needs Docker and network access"),
}


def _shell_commands() -> list[str]:
    out = []
    for lang, code in FENCED:
        if lang == "bash":
            for line in code.splitlines():
                out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def test_readme_has_examples():
    assert len(BLOCKS) >= 3
    assert {lang for lang, _ in FENCED} <= {"python", "bash", "text"}, "unknown block language"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    lines = [line for line in BLOCKS[index].splitlines() if line.strip()]
    assert len(lines) <= 10, f"README.md block {index} has {len(lines)} lines (10 at most)"
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def _ci_command(marker: str) -> str:
    """The command .ci/run takes from README.md (through .ci/readme_command.py)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_command.py"), marker],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


def test_readme_first_command_installs_and_runs_the_demo():
    first = next(code for lang, code in FENCED if lang == "bash").strip()
    assert first == SETUP_COMMAND
    after = TEXT.split("<!-- setup-command -->", 1)[1].lstrip().splitlines()
    assert after[0] == "```bash" and after[1] == SETUP_COMMAND
    assert _ci_command("setup-command") == SETUP_COMMAND


def test_readme_test_command_follows_the_marker():
    after = TEXT.split("<!-- test-command -->", 1)[1].lstrip().splitlines()
    assert after[0] == "```bash" and after[1] == TEST_COMMAND
    assert _ci_command("test-command") == TEST_COMMAND


def test_ci_runs_readme_commands_verbatim_in_a_fresh_virtual_environment():
    script = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines()]
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for prefix in (
            'rm -rf "$venv"',
            'python3 -m venv "$venv"',
            '. "$venv/bin/activate"',
            'bash -c "$setup_command"',
            "ruff check fastamort tests bench",
            'bash -c "$test_command"',
        )
    ]
    assert order == sorted(order), "out of order: fresh venv, set-up, lint, tests"
    assert "setup_command=$(python3 .ci/readme_command.py setup-command)" in lines
    assert "test_command=$(python3 .ci/readme_command.py test-command)" in lines
    assert "pip install" not in script, ".ci/run installs nothing README.md does not"


def test_readme_says_which_torch_build_the_torch_step_brings():
    assert "CUDA build" in TEXT and "nvidia-*" in TEXT  # what a plain PyPI install brings
    assert CPU_TORCH in TEXT  # and how to get the CPU-only build instead


@pytest.mark.parametrize("command", _shell_commands())
def test_readme_shell_command_is_checked(command):
    assert command in SHELL, f"README command {command!r}: run it here, name its test, or skip"
    kind, what = SHELL[command]
    if kind == "test":
        path, name = what.split("::")
        module = importlib.import_module(Path(path).stem)
        assert callable(getattr(module, name, None)), f"{what} does not exist"
    elif kind == "run":
        words = command.split()
        assert words[0] == "fastamort"
        args = [w for w in words[1:] if not w.startswith("--")] + ["--help"]
        proc = subprocess.run(
            [sys.executable, "-m", "fastamort", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert what in proc.stdout, proc.stdout
    else:
        assert kind == "skip" and what


# -- the benchmark table -------------------------------------------------------------------
# The rows shown: (op, M=N, D, dtype), (case, n, p, dtype) and (M, D) of the stored results.
GRAM_ROWS = (
    ("gram", 1024, 32, "float32"),
    ("gram", 4096, 2, "float32"),
    ("gram", 4096, 32, "float32"),
    ("gram", 4096, 32, "float64"),
    ("gram", 4096, 784, "float32"),
    ("gram_matmul", 4096, 32, "float32"),
)
RIDGE_ROWS = (
    ("single", 4096, 1, "float32"),
    ("single", 2048, 17, "float64"),
    ("batched", 32, 1, "float32"),
    ("fused_krr", 64, 1, "float64"),
)
STEP_ROWS = ((1000, 2), (5000, 2), (2000, 64), (2000, 784))


def _ms(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _pick(rows, **want):
    (row,) = [r for r in rows if all(r.get(k) == v for k, v in want.items())]
    return row


def bench_table() -> str:
    """The README's table, from the stored results (selected rows)."""
    res = {n: json.loads((ROOT / f"bench/results/{n}_cpu.json").read_text()) for n in
           ("gram", "ridge", "step")}  # fmt: skip
    lines = [
        "| benchmark | case | dtype | fastamort (cpp) | pure PyTorch | speed-up | authors' code |",
        "|---|---|---|---|---|---|---|",
    ]

    def add(name, case, dtype, t, ref, speedup, authors=""):
        lines.append(f"| {name} | {case} | {dtype} | {_ms(t)} | {_ms(ref)} | {speedup:.1f}× "
                     f"| {authors} |".replace("|  |", "| |"))  # fmt: skip

    gram = res["gram"]["rows"]
    for op, m, d, dtype in GRAM_ROWS:
        r = _pick(gram, op=op, M=m, D=d, dtype=dtype, backend="cpp")
        case = f"{m}×{r['N']}, D={d}" + (f", P={r['P']}" if op == "gram_matmul" else "")
        add(f"`{op}`", case, dtype, r["time_s"], r["torch_ref_s"], r["speedup"])
    ridge = res["ridge"]["rows"]
    for case, n, p, dtype in RIDGE_ROWS:
        r = _pick(ridge, case=case, n=n, p=p, dtype=dtype, backend="cpp")
        if case == "single":
            name, label = "`ridge_solve`", f"n={n}, {p} rhs"
        elif case == "batched":
            name, label = "`ridge_solve`", f"{r['B']} × n={n}, batched"
        else:
            name, label = "`kernel_ridge_batched`", f"{r['B']} × n={n}, D={r['D']}"
        add(name, label, dtype, r["time_s"], r["torch_s"], r["speedup"])
    step = res["step"]["rows"]
    for m, d in STEP_ROWS:
        fast, ref, authors = (_pick(step, M=m, D=d, impl=i) for i in ("fast", "torch", "authors"))
        add("learner step", f"M={m}, N={fast['N']}, D={d}", "float32", fast["time_s"],
            ref["time_s"], fast["speedup_vs_torch"], _ms(authors["time_s"]))  # fmt: skip
    return "\n".join(lines)


def bench_hardware() -> str:
    """The machine and date of each stored result in the table (one line when they agree)."""
    envs = {n: json.loads((ROOT / f"bench/results/{n}_cpu.json").read_text())["environment"]
            for n in ("gram", "ridge", "step")}  # fmt: skip
    first = envs["gram"]
    where = {n: f"{e['device_name']}, measured {e['date'][:10]}" for n, e in envs.items()}
    if len(set(where.values())) == 1:
        machines = where["gram"]
    else:
        machines = "; ".join(f"{n}: {w}" for n, w in where.items())
    return f"Hardware: {machines}; CPU only; torch {first['torch']}, Python {first['python']}."


def test_readme_bench_table_matches_the_stored_results():
    table = TEXT.split("<!-- bench-table -->\n", 1)[1].split("\n\n", 1)[0]
    expected = bench_table()
    assert table == expected, f"regenerate the README table; from bench/results:\n{expected}"
    assert bench_hardware() in TEXT, bench_hardware()
