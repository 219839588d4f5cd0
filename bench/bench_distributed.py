"""Distributed-learning benchmark (1 and 2 ranks, averaged or pooled); results to bench/results/.

    python bench/bench_distributed.py [--quick]

Same code as ``fastamort bench distributed``; this script only picks the output paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _paths import default_outputs

from fastamort.benchmarks.distributed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] + default_outputs("distributed", Path(__file__).parent, sys.argv)))
