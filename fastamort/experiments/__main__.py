"""``python -m fastamort.experiments <name> [--quick] [--seed S] [--out DIR] [--device D]``."""

import sys

from . import main

sys.exit(main(prog="python -m fastamort.experiments"))
