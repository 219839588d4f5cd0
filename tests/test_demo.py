"""The main job, ``fastamort demo``: metrics, figure, determinism, the command line."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from fastamort._backends import cpp_unavailable_reason
from fastamort.cli import main
from fastamort.demo import QUICK, _plot, fit_mle, make_data, run_demo

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _quick(out, **kw):
    return run_demo(out, quick=True, progress=False, verbose=False, device="cpu", **kw)


def test_quick_demo_writes_metrics_and_figure(tmp_path):
    m = _quick(tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["log_likelihood"] == m["log_likelihood"]
    ll = m["log_likelihood"]
    assert ll["learned"]["train"] > ll["initial"]["train"] + 1.0  # 12 steps already help
    assert ll["mle"]["train"] >= ll["learned"]["train"]
    assert ll["mle"]["train"] >= ll["true"]["train"] - 1e-9  # the MLE beats the truth in-sample
    assert m["gap_to_mle_train"] == pytest.approx(ll["mle"]["train"] - ll["learned"]["train"])
    assert m["steps"] == 12 and [c["step"] for c in m["curve"]] == list(range(0, 13, 2))
    assert m["curve"][-1]["train"] == pytest.approx(ll["learned"]["train"])
    if cpp_unavailable_reason() is None:
        assert m["backends"] == ["cpp"]
    assert (tmp_path / "demo.png").exists() == HAS_MPL
    assert m["figure"] == (str(tmp_path / "demo.png") if HAS_MPL else None)


def test_demo_is_deterministic_in_the_seed(tmp_path):
    a = _quick(tmp_path / "a", figure=False)
    b = _quick(tmp_path / "b", figure=False)
    assert a["log_likelihood"] == b["log_likelihood"] and a["curve"] == b["curve"]
    assert not torch.equal(make_data(QUICK, seed=0)[1], make_data(QUICK, seed=1)[1])


def test_mle_is_a_stationary_point_of_the_exact_likelihood():
    truth, x, _ = make_data(QUICK, seed=3)
    mle = fit_mle(x, [truth])
    objective = mle.exact_log_likelihood(x)
    grads = torch.autograd.grad(objective, list(mle.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-6
    torch.testing.assert_close(mle.bias.detach(), x.mean(0), atol=1e-6, rtol=0)
    with torch.no_grad():
        assert float(objective) >= float(truth.exact_log_likelihood(x)) - 1e-12
    assert truth.weight.requires_grad and mle is not truth  # the start is left untouched


def test_missing_matplotlib_skips_the_figure_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    truth, _, _ = make_data(QUICK, seed=0)
    said = []
    curve = [{"step": 0, "train": -1.0, "held_out": -1.0}]
    ll = {"mle": {"train": -1.0, "held_out": -1.0}}
    out = _plot(tmp_path / "demo.png", curve, ll, truth, truth, truth, said.append)
    assert out is None and not (tmp_path / "demo.png").exists()
    assert "matplotlib is not installed" in said[0]


def test_cli_demo_prints_the_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--no-figure", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ("amortised learning (12 steps)", "maximum likelihood", "gap to the MLE"):
        assert expected in text
    assert json.loads((out / "metrics.json").read_text())["quick"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_demo_without_cuda_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--device", "cuda", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cli_unwritable_output_fails_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # a run that started would call these: the errors must come first
    monkeypatch.setattr("fastamort.demo.make_data", lambda *a, **k: pytest.fail("demo ran"))
    monkeypatch.setattr("fastamort.benchmarks.gram.run", lambda **k: pytest.fail("bench ran"))
    for argv, flag in [
        (["demo", "--quick", "--out", str(blocker / "out")], "--out"),
        (["bench", "gram", "--quick", "--json", str(blocker / "r.json")], "--json"),
        (["bench", "gram", "--quick", "--plot", str(blocker / "p" / "r.png")], "--plot"),
        (["bench", "gram", "--device", "junk"], "--device"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert flag in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["bench", "gram", "--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err


def test_cli_info_and_bench_still_parse(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends:" in out
    if cpp_unavailable_reason() is None:  # the extension's build is shown
        from fastamort import _C

        (line,) = [ln for ln in out.splitlines() if ln.startswith("cpp build: ")]
        assert _C.BUILD_INFO["compiler"] in line and "kernels: baseline" in line, line
        assert ("OpenMP off" in line) == (_C.BUILD_INFO["openmp"] == 0), line
    with pytest.raises(SystemExit):
        main(["bench", "no-such-benchmark"])
    with pytest.raises(SystemExit):
        main(["bench"])
    assert main(["bench", "--help"]) == 0
    assert "benchmarks: gram, ridge" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["info", "--unknown"])


@pytest.mark.skipif(not HAS_MPL, reason="needs matplotlib")
def test_an_interrupted_figure_save_leaves_the_previous_complete_output(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    _quick(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"metrics.json", "demo.png"}
    real_savefig = Figure.savefig

    def interrupted(self, fname, *args, **kwargs):  # Ctrl-C half-way through the PNG
        real_savefig(self, fname, *args, **kwargs)
        with open(fname, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quick(tmp_path, seed=1)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # the previous run's files, complete; no temporary files


def test_seed_out_of_range_is_a_clean_error(tmp_path, capsys):
    for seed in (str(2**40), "-1"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--quick", "--seed", seed, "--out", str(tmp_path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--seed: expected an integer in [0, 2**32), got {seed}" in err
        assert "Traceback" not in err
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*32\)"):
        _quick(tmp_path, seed=2**40)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_default_demo_closes_the_gap_to_the_mle(tmp_path):
    """The default budget (200 steps) ends within 0.25 nats per point of the MLE, and the
    output quoted in README.md is what the demo prints (up to BLAS rounding)."""
    m = run_demo(tmp_path, progress=False, verbose=False, figure=False, device="cpu")
    assert m["steps"] == 200
    assert m["fraction_of_gap_closed"] > 0.98
    assert 0.0 <= m["gap_to_mle_train"] < 0.25
    assert abs(m["gap_to_mle_held_out"]) < 0.25
    assert m["covariance_relative_error"] < 0.1

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    labels = {
        "initial": "initial model",
        "learned": "amortised learning (200 steps)",
        "mle": "maximum likelihood (L-BFGS on exact log p)",
        "true": "true generating parameters",
    }
    for key, label in labels.items():
        found = re.search(re.escape(label) + r"\s+(-?[\d.]+)\s+(-?[\d.]+)", readme)
        assert found, f"README.md does not quote the demo's line {label!r}"
        quoted = (float(found[1]), float(found[2]))
        got = (m["log_likelihood"][key]["train"], m["log_likelihood"][key]["held_out"])
        assert quoted == pytest.approx(got, abs=2e-3), (label, quoted, got)
