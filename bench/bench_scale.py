"""Solver accuracy/cost study (exact, Nyström, RFF, CG up to M = 100,000); results to
bench/results/scale.{json,csv,png} (``--quick``: scale_quick.{json,png}, rows appended to the
same CSV).

    python bench/bench_scale.py [--quick]

Same code as ``fastamort bench scale``; this script only picks the output paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastamort.benchmarks.scale import main

if __name__ == "__main__":
    results = Path(__file__).parent / "results"
    tag = "_quick" if "--quick" in sys.argv else ""
    outputs = [
        "--json",
        str(results / f"scale{tag}.json"),
        "--csv",
        str(results / "scale.csv"),
        "--plot",
        str(results / f"scale{tag}.png"),
    ]
    sys.exit(main(sys.argv[1:] + outputs))
