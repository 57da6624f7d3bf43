"""A benchmark's results on disk: ``NAME.json`` and ``NAME.md`` side by side, each
starting from the command that produced them, and the Markdown echoed to the terminal.

Every benchmark script writes its results through :func:`write_report`, so that every
results folder says, in the same place, how to produce it again.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def command_line(python: str = "python") -> str:
    """This script's command line, as a reader would type it again from the repository root
    (a script path under the repository is written relative to it)."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return f"{python} " + shlex.join([str(script), *sys.argv[1:]])


def machine() -> str:
    """The machine in a few words, for the line under a results table."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines from its header and already formatted cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def write_report(
    out: str | Path,
    name: str,
    record: dict[str, Any],
    body: list[str],
    *,
    title: str | None = None,
    command: str | None = None,
) -> Path:
    """``out/NAME.json`` (``record`` under the command) and ``out/NAME.md`` (the title, the
    command, then ``body``), then print the Markdown; returns ``out``.

    ``command`` defaults to this process's own command line.
    """
    command = command or command_line()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"command": command, **record}
    (out / f"{name}.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    lines = [*([f"# {title}", ""] if title else []), f"`{command}`", "", *body]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
