"""Prints the command README.md gives after a ``<!-- NAME -->`` marker (the first line of the
fenced block that follows it), so that CI runs README's commands verbatim.

    python3 .ci/readme_command.py setup-command
    python3 .ci/readme_command.py test-command
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def command(marker: str, text: str | None = None) -> str:
    """The one-line command in the fenced block right after ``<!-- marker -->``."""
    text = README.read_text(encoding="utf-8") if text is None else text
    tag = f"<!-- {marker} -->"
    if text.count(tag) != 1:
        raise SystemExit(f"README.md: expected one {tag} marker, found {text.count(tag)}")
    lines = text.split(tag, 1)[1].lstrip("\n").splitlines()
    if len(lines) < 3 or not lines[0].startswith("```") or lines[2] != "```":
        raise SystemExit(f"README.md: {tag} must be followed by a fenced block of one line")
    return lines[1]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: readme_command.py MARKER")
    print(command(sys.argv[1]))
