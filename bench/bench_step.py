"""Learner-step benchmark (fast, torch-reference, authors-style); results to bench/results/.

    python bench/bench_step.py [--quick]

Same code as ``fastamort bench step``; this script only picks the output paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _paths import default_outputs

from fastamort.benchmarks.step import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] + default_outputs("step", Path(__file__).parent, sys.argv)))
