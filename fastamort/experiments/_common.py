"""Run helpers shared by the experiments: output folder, seeding, device, result files, plots.

Every run writes into its output folder:

``metrics.json``
    a flat object of metric name → number at the top level (what a reader or a test checks);
    nested details sit under the non-numeric keys ``details`` and ``environment``.
``config.json``
    the resolved configuration (every size and budget), the seed, the device, the command line
    and the environment (versions, device name, threads, date).
``results.md``
    a short markdown table.
``*.png``
    plots (matplotlib, Agg backend). matplotlib is an optional dependency
    (``pip install 'fastamort[bench]'``): without it the plots are skipped with a
    :class:`PlotsSkippedWarning` and everything else is written.

:func:`fastamort.experiments.run_experiment` runs an experiment in a staging folder
(:func:`staged_output`) and moves its files into the output folder only when it has finished,
``metrics.json`` last: an interrupted or failed run leaves the previous run's files, complete.
Each file is also written atomically on its own (:mod:`fastamort._atomic`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import random
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _atomic

DEFAULT_ROOT = "fastamort-experiments"


class PlotsSkippedWarning(UserWarning):
    """matplotlib is missing: an experiment wrote no plots."""


def resolve_out(name: str, out: str | Path | None) -> Path:
    """The output folder (created): ``out``, or ``./fastamort-experiments/<name>``."""
    path = Path(out) if out is not None else Path(DEFAULT_ROOT) / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out: cannot create the folder {str(path)!r}: {err}") from err
    try:  # a real write now, rather than a failure after the run
        _atomic.probe_writable(path / "metrics.json")
    except OSError as err:
        raise ValueError(f"out: cannot write into the folder {str(path)!r}: {err}") from err
    return path


def staged_output(folder: Path):
    """Context manager: a fresh staging folder for one run's files, moved into ``folder`` at a
    clean exit (``metrics.json`` last), removed at an exception (see
    :func:`fastamort._atomic.staged_folder`)."""
    return _atomic.staged_folder(folder, last=("metrics.json",))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU; an explicit "cuda" must be available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return dev


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds code that uses the legacy global RNG)
    torch.manual_seed(seed)


def sub_seed(seed: int, *parts: object) -> int:
    """A deterministic seed for one piece of a run (stable across Python processes)."""
    h = seed * 1_000_003
    for p in parts:
        for ch in str(p):
            h = (h * 31 + ord(ch)) % (2**61 - 1)
    return h % (2**31)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds), synchronising CUDA around the call."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def environment(device: torch.device) -> dict[str, Any]:
    """Provenance: versions, device name, threads, date (shared with the benchmarks)."""
    from ..benchmarks._harness import environment as env

    return env(device)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if isinstance(v, Path):
        return str(v)
    return v


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    _atomic.atomic_write(path, json.dumps(_jsonable(obj), indent=1) + "\n")
    return path


def write_metrics(
    out: Path, metrics: dict[str, float], details: dict[str, Any], env: dict[str, Any]
) -> Path:
    """``metrics.json``: the flat numbers, then ``details`` and ``environment``.

    ``details["non_finite"]`` lists the metrics that are NaN or infinite (empty when none).
    """
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise TypeError(f"metrics must be numbers; not: {bad}")
    reserved = {"details", "environment"} & set(metrics)
    if reserved:
        raise ValueError(f"metric names {sorted(reserved)} are reserved")
    details = {**details, "non_finite": [k for k, v in metrics.items() if not math.isfinite(v)]}
    return write_json(out / "metrics.json", {**metrics, "details": details, "environment": env})


def write_config(
    out: Path, name: str, config: dict[str, Any], *, seed: int, quick: bool,
    device: torch.device, env: dict[str, Any],
) -> Path:  # fmt: skip
    return write_json(
        out / "config.json",
        {
            "experiment": name,
            "quick": quick,
            "seed": seed,
            "device": str(device),
            "command": " ".join(sys.argv),
            "config": config,
            "environment": env,
        },
    )


def command_line(
    name: str, config: Any, base: Any, *, quick: bool, seed: int, device: torch.device
) -> str:
    """The ``fastamort experiment`` command that reruns ``config``: ``--features`` when the
    Config has that field, and ``--set NAME=VALUE`` for every other field that differs from
    ``base`` (the experiment's QUICK or FULL, whichever ``quick`` picks), so that a results.md
    names its overrides (``--set`` parses each value back as a Python literal)."""
    words = ["fastamort", "experiment", name] + (["--quick"] if quick else [])
    words += ["--seed", str(seed), "--device", device.type]
    values = dataclasses.asdict(config)
    if "features" in values:
        words += ["--features", str(values.pop("features"))]
    defaults = dataclasses.asdict(base)
    for field, value in values.items():
        if value != defaults.get(field):
            text = value if isinstance(value, str) and not _is_literal(value) else repr(value)
            words += ["--set", f"{field}={text}"]
    return shlex.join(words)


def _is_literal(text: str) -> bool:
    """Whether ``--set`` would read ``text`` as a Python literal rather than a string."""
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    return True


def start_run(
    out: Path, name: str, config: Any, *, seed: int, quick: bool, device: torch.device
) -> dict[str, Any]:
    """Writes ``config.json`` for a run of ``name`` with the dataclass ``config``; returns the
    environment (provenance) that ``metrics.json`` repeats."""
    env = environment(device)
    write_config(
        out, name, dataclasses.asdict(config), seed=seed, quick=quick, device=device, env=env
    )
    return env


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of repeated measurements; std 0 for one value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results_md(out: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """``results.md``: a title, then (heading, body) sections."""
    text = [f"# {title}", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body.rstrip(), ""]
    return _atomic.atomic_write(out / "results.md", "\n".join(text))


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a warning) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: the plots were skipped "
            "(pip install 'fastamort[bench]' to get them)",
            PlotsSkippedWarning,
            stacklevel=2,
        )
        return None
    return plt
