"""Ridge benchmark: backends side by side; results to bench/results/ (JSON, CSV, PNG).

    python bench/bench_ridge.py [--quick]

Same code as ``fastamort bench ridge``; this script only picks the output paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _paths import default_outputs

from fastamort.benchmarks.ridge import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] + default_outputs("ridge", Path(__file__).parent, sys.argv)))
