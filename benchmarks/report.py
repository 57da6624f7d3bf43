"""A benchmark's results on disk: ``NAME.json`` and ``NAME.md`` side by side, each
starting from the command that produced them, and the Markdown echoed to the terminal.

Every benchmark script writes its results through :func:`write_report`, so that every
results folder says, in the same place, how to produce it again and on what machine.
"""

from __future__ import annotations

import json
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


# The retriever imports below happen when called: a script that runs itself as a worker
# on an older checkout (--before) imports this module there, where they may not exist.


def machine_record(**details: Any) -> dict[str, Any]:
    """:func:`retriever.evaluation.machine.machine_record`."""
    from retriever.evaluation.machine import machine_record as record

    return record(**details)


def encoder_machine_record(encoder: Any) -> dict[str, Any]:
    """:func:`retriever.evaluation.machine.encoder_machine_record`."""
    from retriever.evaluation.machine import encoder_machine_record as record

    return record(encoder)


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
    title: str,
    machine: dict[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """``out/NAME.json`` (the command, the machine, then ``record``) and ``out/NAME.md``
    (the title, the machine in one line, the command, then ``body``), then print the
    Markdown; returns ``out``.

    ``machine`` is :func:`machine_record` (or :func:`encoder_machine_record` for a
    benchmark that runs a model), made here for one that runs none; ``command`` defaults
    to this process's own command line.
    """
    from retriever.evaluation.machine import machine_line

    command = command or command_line()
    machine = machine or machine_record()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "machine": machine, **record}
    (out / f"{name}.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# {title}", "", machine_line(machine), "", f"`{command}`", "", *body]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
