"""``python -m fastamort ...`` is the same as the ``fastamort`` command."""

import sys

from .cli import main

sys.exit(main())
