"""The experiments' command line, result files and the --quick smoke run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from fastamort.experiments import EXPERIMENTS, _common, main, run_experiment


def test_list_names_every_experiment(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in out


def test_module_entry_point_lists():
    proc = subprocess.run(
        [sys.executable, "-m", "fastamort.experiments", "--list"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "gradient-estimation" in proc.stdout


def test_unknown_experiment_and_bad_options_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-experiment"])
    assert exc.value.code == 2
    assert "gradient-estimation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("nope", out=tmp_path)
    with pytest.raises(ValueError, match="threads"):
        run_experiment("gradient-estimation", out=tmp_path, threads=-1)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="out: cannot create the folder"):
        run_experiment("circle", quick=True, out=blocker / "x")
    assert main(["circle", "--quick", "--out", str(blocker / "x")]) == 2
    assert "out: cannot create" in capsys.readouterr().err
    for seed in ("-1", str(2**64)):
        with pytest.raises(SystemExit):
            main(["circle", "--quick", "--seed", seed])
        assert "--seed: expected an integer in [0, 2**32)" in capsys.readouterr().err


def test_metrics_must_be_flat_numbers(tmp_path):
    with pytest.raises(TypeError, match="numbers"):
        _common.write_metrics(tmp_path, {"a": "x"}, {}, {})
    with pytest.raises(ValueError, match="reserved"):
        _common.write_metrics(tmp_path, {"details": 1.0}, {}, {})
    path = _common.write_metrics(tmp_path, {"a": 1.5, "b": 2}, {"nested": [1]}, {"v": "1"})
    assert json.loads(path.read_text()) == {
        "a": 1.5, "b": 2, "details": {"nested": [1], "non_finite": []}, "environment": {"v": "1"},
    }  # fmt: skip
    path = _common.write_metrics(tmp_path, {"a": float("nan"), "b": 2}, {}, {})
    assert json.loads(path.read_text())["details"] == {"non_finite": ["a"]}


def _fake_experiment(monkeypatch, interrupt_after=None):
    """Registers experiment "fake": it writes config.json, a plot, results.md, metrics.json
    (through _common) and, with ``interrupt_after``, is interrupted after that file."""
    import types

    module = types.ModuleType("fake_experiment")

    def run(*, quick, seed, out, device, progress):
        env = {"seed": seed}
        _common.write_json(out / "config.json", {"seed": seed})
        if interrupt_after == "config.json":
            raise KeyboardInterrupt
        (out / "plot.png").write_bytes(b"\x89PNG" + bytes([seed]) * 50)
        if interrupt_after == "plot.png":
            (out / "plot.png").write_bytes(b"\x89PN")  # half-way through the figure
            raise KeyboardInterrupt
        _common.write_results_md(out, "fake", [("seed", str(seed))])
        _common.write_metrics(out, {"seed": float(seed)}, {}, env)
        return {"seed": float(seed)}

    module.run = run
    monkeypatch.setitem(sys.modules, "fake_experiment", module)
    monkeypatch.setitem(EXPERIMENTS, "fake", "fake_experiment")


def test_an_interrupted_experiment_leaves_the_previous_complete_output(tmp_path, monkeypatch):
    _fake_experiment(monkeypatch)
    assert run_experiment("fake", seed=1, out=tmp_path) == {"seed": 1.0}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"config.json", "plot.png", "results.md", "metrics.json"}
    for where in ("config.json", "plot.png"):
        _fake_experiment(monkeypatch, interrupt_after=where)
        with pytest.raises(KeyboardInterrupt):
            run_experiment("fake", seed=2, out=tmp_path)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, where
    # a run killed outright leaves its staging folder: the next run removes it
    stale = tmp_path / ".staging.999999999.0123abcd.tmp"
    stale.mkdir()
    (stale / "metrics.json").write_text("{}")
    _fake_experiment(monkeypatch)
    run_experiment("fake", seed=3, out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert json.loads((tmp_path / "metrics.json").read_text())["seed"] == 3


def test_plots_are_skipped_with_a_warning_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(_common.PlotsSkippedWarning, match=r"fastamort\[bench\]"):
        assert _common.pyplot() is None


@pytest.mark.slow
def test_gradient_estimation_quick_run(tmp_path):
    metrics = run_experiment("gradient-estimation", quick=True, seed=0, out=tmp_path,
                             progress=False)  # fmt: skip
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    flat = {k: v for k, v in on_disk.items() if k not in ("details", "environment")}
    assert flat == pytest.approx(metrics)
    for key in ("amortised_cosine", "vae_cosine", "iwae_cosine", "rws_cosine",
                "amortised_rel_error", "amortised_generic_cosine", "iwae5_cosine"):  # fmt: skip
        assert key in flat
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in flat.values())
    # the estimates point the right way (a sign or weighting bug would not)
    for key in ("fa_amortised_expfam_cosine", "gmm_amortised_expfam_cosine",
                "fa_rws_cosine", "gmm_rws_cosine", "fa_iwae50_cosine"):  # fmt: skip
        assert flat[key] > 0.9, (key, flat[key])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quick"] is True and config["config"]["repeats"] >= 2
    assert config["environment"]["torch"]
    text = (tmp_path / "results.md").read_text()
    assert "| method |" in text
    command = "fastamort experiment gradient-estimation --quick --seed 0 --device cpu"
    assert f"Command: `{command}`" in text
    pytest.importorskip("matplotlib")
    for name in ("relative_error.png", "cosine.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_the_results_command_reruns_the_configuration():
    """results.md's "Command:" line names every ``--set`` override (an earlier version left
    them out) and ``--features``; parsed by the command line's own parser it gives back the
    same Config."""
    import dataclasses
    import shlex

    import torch

    from fastamort.experiments import build_parser, gradient_estimation, ica, parse_overrides

    cpu = torch.device("cpu")
    cfg = dataclasses.replace(
        ica.FULL, syn_n_sleep=4000, lam="evidence", img_lam="None", features="linear-bn"
    )
    words = shlex.split(_common.command_line("ica", cfg, ica.FULL, quick=False, seed=3, device=cpu))
    assert words[:2] == ["fastamort", "experiment"]
    args = build_parser().parse_args(words[2:])
    assert (args.name, args.seed, args.device, args.quick) == ("ica", 3, "cpu", False)
    assert args.features == "linear-bn"
    assert sorted(args.overrides) == ["img_lam='None'", "lam=evidence", "syn_n_sleep=4000"]
    back = dataclasses.replace(ica.FULL, features=args.features, **parse_overrides(args.overrides))
    assert back == cfg

    base = gradient_estimation.QUICK
    cfg = dataclasses.replace(base, sleep_sizes=(10, 20), lam_rule="loo")
    line = _common.command_line("gradient-estimation", cfg, base, quick=True, seed=0, device=cpu)
    args = build_parser().parse_args(shlex.split(line)[2:])
    assert args.quick and "--features" not in line
    assert dataclasses.replace(base, **parse_overrides(args.overrides)) == cfg
    plain = _common.command_line("ica", ica.FULL, ica.FULL, quick=False, seed=0, device=cpu)
    assert plain == "fastamort experiment ica --seed 0 --device cpu --features none"
