"""Experiments that reproduce the paper's comparisons, each runnable with one command.

``python -m fastamort.experiments <name> [--quick] [--seed S] [--out DIR] [--device cpu|cuda]``
(and ``--list``); the same through :func:`run_experiment`. Each run writes ``metrics.json``,
``config.json``, ``results.md`` and PNG plots into its output folder (see
:mod:`fastamort.experiments._common`). ``--quick`` is a small configuration for smoke tests
(under 3 minutes on 2 CPU cores); without it the full configuration documented in each
module runs, the one ``docs/RESULTS.md`` reports.

An experiment module defines ``NAME``, a docstring whose first line describes it, and
``run(*, quick, seed, out, device, progress) -> dict[str, float]`` (the flat metrics). The
experiments in which the paper used a learned feature kernel (images, circle, dynamics, nmf,
ica) also take ``features`` (``--features linear-bn``; :mod:`fastamort.experiments._features`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from . import _common
from ._features import FEATURES, check_features

#: experiment name → module (imported on use, so ``--list`` stays light)
EXPERIMENTS: dict[str, str] = {
    "gradient-estimation": "fastamort.experiments.gradient_estimation",
    "images": "fastamort.experiments.images",
    "circle": "fastamort.experiments.circle",
    "dynamics": "fastamort.experiments.dynamics",
    "nmf": "fastamort.experiments.nmf",
    "hierarchical": "fastamort.experiments.hierarchical",
    "ica": "fastamort.experiments.ica",
    "neural-process": "fastamort.experiments.neural_process",
}


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (``ValueError`` listing the names if unknown)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def takes_features(name: str) -> bool:
    """Whether experiment ``name``'s ``run`` takes the ``features`` option."""
    return "features" in inspect.signature(get_experiment(name).run).parameters


def describe(name: str) -> str:
    doc = get_experiment(name).__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(": ", 1)[-1]


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
    threads: int | None = None,
    features: str = "none",
    overrides: dict[str, object] | None = None,
) -> dict[str, float]:
    """Runs experiment ``name`` and returns its flat metrics (also written to ``out``).

    Args:
        quick: the small smoke-test configuration.
        seed: seeds everything in the run.
        out: output folder (default ``./fastamort-experiments/<name>``).
        device: "cpu", "cuda" or None/"auto" (CUDA when available).
        progress: show a tqdm progress bar.
        threads: torch's intra-op CPU threads during the run, restored afterwards. Default
            (None) on the CPU: 1 — the problems are small, thread start-up dominates, and one
            thread keeps the timings of all methods comparable and stable on a shared machine
            (two threads on a loaded 2-core machine ran the quick configuration 8× slower);
            0 leaves torch's setting alone.
        features: the amortised learner's kernel: "none" (Gaussian on the raw observations)
            or "linear-bn" (Gaussian on learned Linear + BatchNorm features), for the
            experiments that take it (:func:`takes_features`).
        overrides: fields of the experiment's ``Config`` to replace (``--set name=value``),
            applied to the quick or the full configuration.
    """
    module = get_experiment(name)
    extra = {}
    if takes_features(name):
        extra["features"] = check_features(features)
    elif features != "none":
        raise ValueError(
            f"features: experiment {name!r} has no features option (only "
            f"{', '.join(n for n in EXPERIMENTS if takes_features(n))})"
        )
    dev = _common.resolve_device(device)
    if threads is None:
        threads = 1 if dev.type == "cpu" else 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads: expected an integer >= 0, got {threads!r}")
    _common.seed_everything(seed)
    folder = _common.resolve_out(name, out)
    before = torch.get_num_threads()
    if overrides:
        base = module.QUICK if quick else module.FULL
        names = {f.name for f in dataclasses.fields(base)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(
                f"overrides: {name!r} has no configuration field {', '.join(unknown)} "
                f"(fields: {', '.join(sorted(names))})"
            )
        extra["config"] = dataclasses.replace(base, **overrides)
    if threads:
        torch.set_num_threads(threads)
    try:
        with _common.staged_output(folder) as stage:  # the files move into folder at the end
            return module.run(
                quick=quick, seed=seed, out=stage, device=dev, progress=progress, **extra
            )
    finally:
        torch.set_num_threads(before)


def build_parser(prog: str = "fastamort experiment") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="run a paper experiment")
    parser.add_argument("name", nargs="?", help="which experiment (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--quick", action="store_true", help="small smoke-test configuration")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default 1 on the CPU; 0: torch's default)",
    )  # fmt: skip
    parser.add_argument(
        "--features", default="none", choices=list(FEATURES),
        help="the amortised learner's kernel features (images, circle, dynamics, nmf, ica): "
        "none = raw observations (default), linear-bn = learned Linear + BatchNorm",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
        help="replace a field of the experiment's Config (a Python literal, else a string); "
        "repeatable, e.g. --set intercept=True",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """``["name=value", ...]`` → {name: value}, the value a Python literal or else a string."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--set: expected NAME=VALUE, got {item!r}")
        try:
            out[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[name] = text
    return out


def main(argv: Sequence[str] | None = None, prog: str = "fastamort experiment") -> int:
    """Command line; returns the exit status (0 on success)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.list:
        for name in EXPERIMENTS:
            print(f"{name:24s} {describe(name)}")
        return 0
    if args.name is None:
        parser.error("name an experiment (or --list)")
    if args.name not in EXPERIMENTS:
        parser.error(f"unknown experiment {args.name!r}; choose from {', '.join(EXPERIMENTS)}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed: expected an integer in [0, 2**32), got {args.seed}")
    try:
        metrics = run_experiment(
            args.name, quick=args.quick, seed=args.seed, out=args.out, device=args.device,
            progress=not args.no_progress, threads=args.threads, features=args.features,
            overrides=parse_overrides(args.overrides),
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = _common.resolve_out(args.name, args.out)
    print(f"wrote {folder}/metrics.json, config.json, results.md and plots")
    print((folder / "results.md").read_text())
    del metrics
    return 0


__all__ = ["EXPERIMENTS", "get_experiment", "main", "run_experiment", "takes_features"]
