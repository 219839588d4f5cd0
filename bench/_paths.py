"""Default result paths for the bench/ scripts: bench/results/<name>[_quick]_<device>.*"""

from __future__ import annotations

from pathlib import Path

import torch


def default_outputs(name: str, bench_dir: Path, argv: list[str]) -> list[str]:
    results = bench_dir / "results"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "--device" in argv:
        device = argv[argv.index("--device") + 1]
    tag = "quick_" if "--quick" in argv else ""
    return [
        "--json",
        str(results / f"{name}_{tag}{device}.json"),
        "--csv",
        str(results / f"{name}.csv"),
        "--plot",
        str(results / f"{name}_{tag}{device}.png"),
    ]
