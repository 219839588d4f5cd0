"""KernelRidge benchmark: fastamort vs scikit-learn vs plain torch; results to bench/results/.

    python bench/bench_regressor.py [--quick]

Same code as ``fastamort bench regressor``; this script only picks the output paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _paths import default_outputs

from fastamort.benchmarks.regressor import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] + default_outputs("regressor", Path(__file__).parent, sys.argv)))
