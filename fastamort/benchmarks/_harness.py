"""Timing, memory and result-writing helpers shared by the benchmarks."""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastamort
from fastamort._atomic import StagedFiles, probe_writable


def available_backends(op: str, device: torch.device) -> list[str]:
    """Compiled backends that can run ``op`` on ``device`` (the torch reference is timed apart)."""
    from fastamort._backends import BackendUnavailableError, resolve_backend

    out = []
    for name in ("triton", "cpp"):
        try:
            resolve_backend(op, name, device)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 1.0,
) -> dict[str, float]:
    """Median and best wall time of ``fn`` in seconds (one warm-up call first, not counted)."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < min_repeats or time.perf_counter() - start < budget_s
    ):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "best_s": min(times), "repeats": len(times)}


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory above the level before the call, in bytes, measured (not estimated).

    CUDA: torch's peak-allocation counter. CPU (Linux): the resident-set high-water mark,
    reset through /proc/self/clear_refs. None where neither is available.
    """
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    before = _read_status_kib("VmRSS")
    fn()
    peak = _read_status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, (peak - before) * 1024)


def environment(device: torch.device) -> dict[str, Any]:
    """Provenance of a benchmark row."""
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = _cpu_name()
    env: dict[str, Any] = {
        "device": device.type,
        "device_name": dev_name,
        "cpu_threads": torch.get_num_threads(),
        "fastamort": fastamort.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain-text table of selected columns."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def write_results(
    rows: Sequence[dict[str, Any]],
    env: dict[str, Any],
    *,
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    stage: StagedFiles | None = None,
) -> None:
    """JSON: {"environment": env, "rows": rows} (overwritten). CSV: rows appended, env inlined.

    Both files are replaced atomically (the CSV with its old rows and the new ones), together
    with the other files of ``stage`` when given (see :mod:`fastamort._atomic`).
    """
    if stage is None:
        with StagedFiles() as own:
            write_results(rows, env, json_path=json_path, csv_path=csv_path, stage=own)
        return
    if json_path:
        stage.write(json_path, json.dumps({"environment": env, "rows": list(rows)}, indent=1))
    if csv_path:
        full = [{**env, **r} for r in rows]
        fields: list[str] = []
        for r in full:
            fields += [k for k in r if k not in fields]
        old = ""
        if Path(csv_path).exists():
            with open(csv_path, newline="") as fh:
                old = fh.read()
        if old:
            fields = next(csv.reader(io.StringIO(old)), [])  # keep the file's columns;
            # new ones go to the JSON only
            if not old.endswith("\n"):
                old += "\n"
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
        if not old:
            writer.writeheader()
        writer.writerows(full)
        stage.write(csv_path, old + text.getvalue())


def bench_main(
    name: str,
    doc: str,
    run: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]],
    plot: Callable[[Sequence[dict[str, Any]], str], None],
    columns: Sequence[str],
    argv: Sequence[str] | None,
) -> int:
    """The command line shared by every benchmark: run, print a table, write files."""
    parser = argparse.ArgumentParser(prog=f"fastamort bench {name}", description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if present"
    )
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--csv", default=None, help="append the rows to this CSV file")
    parser.add_argument("--plot", default=None, help="write a PNG plot here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch has no CUDA device here")
    for flag in ("json", "csv", "plot"):  # before the run: an unusable path fails now
        path = getattr(args, flag)
        try:
            if path is not None:
                probe_writable(path)
        except OSError as err:
            parser.error(f"--{flag}: cannot write {path!r}: {err}")
    rows, env = run(quick=args.quick, device=args.device)
    print(f"\n{env['device_name']}, torch {env['torch']}, {env['cpu_threads']} threads")
    print_table(rows, columns)
    with StagedFiles() as stage:  # all files replaced together at the end, or none
        if args.plot:
            plot(rows, str(stage.path(args.plot)))
        write_results(rows, env, json_path=args.json, csv_path=args.csv, stage=stage)
    return 0
