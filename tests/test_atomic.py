"""Atomic writes (fastamort._atomic) and the benchmark harness's result files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastamort import _atomic
from fastamort.benchmarks._harness import bench_main


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_atomic_write_replaces_through_a_symlink_with_the_umask_mode(tmp_path):
    target = tmp_path / "real" / "r.json"
    target.parent.mkdir()
    link = tmp_path / "r.json"
    link.symlink_to(target)
    old = os.umask(0o027)
    try:
        _atomic.atomic_write(link, "one")
    finally:
        os.umask(old)
    assert link.is_symlink() and target.read_text() == "one"
    assert target.stat().st_mode & 0o777 == 0o640
    target.chmod(0o604)
    _atomic.atomic_write(link, b"two")
    assert target.read_text() == "two" and target.stat().st_mode & 0o777 == 0o604
    assert not _temps(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), _atomic.atomic_open(path, "w") as fh:
        fh.write("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and not _temps(tmp_path)


def test_temporary_files_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    path = tmp_path / "ck.pt"
    dead = tmp_path / f".ck.pt.{_dead_pid()}.0123abcd.tmp"
    live = tmp_path / f".ck.pt.{os.getppid()}.0123abcd.tmp"  # a running process's write
    other = tmp_path / f".other.pt.{_dead_pid()}.0123abcd.tmp"  # another target's: not ours
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    _atomic.atomic_write(path, b"x")
    assert not dead.exists() and live.exists() and other.exists()
    assert _atomic.probe_writable(tmp_path / "other.pt") == (tmp_path / "other.pt").resolve()
    assert not other.exists() and not (tmp_path / "other.pt").exists()


def test_staged_files_change_all_targets_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.png"
    with _atomic.StagedFiles() as stage:
        stage.write(a, "a1")
        stage.path(b).write_bytes(b"b1")
    assert a.read_text() == "a1" and b.read_bytes() == b"b1"
    with pytest.raises(RuntimeError), _atomic.StagedFiles() as stage:
        stage.write(a, "a2")
        stage.path(b).write_bytes(b"b2")
        raise RuntimeError("the run failed")
    assert a.read_text() == "a1" and b.read_bytes() == b"b1" and not _temps(tmp_path)


def test_ctrl_c_during_the_renames_is_delivered_after_all_of_them(tmp_path, monkeypatch):
    targets = [tmp_path / f"{i}.txt" for i in range(3)]
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first rename

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt), _atomic.StagedFiles() as stage:
        for i, t in enumerate(targets):
            stage.write(t, str(i))
    assert [t.read_text() for t in targets] == ["0", "1", "2"]


def test_staged_folder_moves_a_complete_result_metrics_last(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    order = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda s, d: (order.append(Path(d).name), real_replace(s, d))
    )
    with _atomic.staged_folder(out, last=("metrics.json",)) as stage:
        (stage / "metrics.json").write_text("{}")
        (stage / "plots").mkdir()
        (stage / "plots" / "z.png").write_bytes(b"png")
    assert (out / "metrics.json").read_text() == "{}" and (out / "plots" / "z.png").exists()
    assert order[-1] == "metrics.json" and (out / "keep.txt").read_text() == "user file"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "metrics.json", "plots"]
    with pytest.raises(KeyboardInterrupt), _atomic.staged_folder(out) as stage:
        (stage / "metrics.json").write_text('{"new": 1}')
        raise KeyboardInterrupt
    assert (out / "metrics.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "metrics.json", "plots"]


def _bench(tmp_path, plot, value=1.0):
    rows = [{"op": "x", "time_s": value}]

    def run(quick, device):
        return rows, {"device_name": "cpu", "torch": "t", "cpu_threads": 1, "date": "d"}

    argv = ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
            "--plot", str(tmp_path / "r.png")]  # fmt: skip
    return bench_main("fake", "A fake benchmark.", run, plot, ["op", "time_s"], argv)


def test_an_interrupted_benchmark_leaves_the_previous_complete_files(tmp_path, capsys):
    def plot(rows, path):
        Path(path).write_bytes(b"\x89PNG complete")

    assert _bench(tmp_path, plot) == 0
    assert _bench(tmp_path, plot, 2.0) == 0  # the CSV gains rows, the JSON is replaced
    assert (tmp_path / "r.csv").read_text().splitlines()[1:] == ["cpu,t,1,d,x,1.0",
                                                                  "cpu,t,1,d,x,2.0"]  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["time_s"] == 2.0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(rows, path):  # Ctrl-C half-way through the figure
        Path(path).write_bytes(b"\x89PN")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, interrupted, 3.0)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    capsys.readouterr()
