"""A benchmark's results on disk: ``NAME.json`` and ``NAME.md`` side by side, each
starting from the command that produced them, and the Markdown echoed to the terminal."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def command_line(python: str = "python") -> str:
    """This script's command line, as a reader would type it again."""
    return f"{python} " + shlex.join(sys.argv)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines from its header and already formatted cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def write_report(out: str | Path, name: str, record: dict[str, Any], lines: list[str]) -> None:
    """``record`` as ``out/NAME.json`` and ``lines`` as ``out/NAME.md``, then print them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
