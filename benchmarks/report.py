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


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and which of ISA_FLAGS it has: the kernels torch, oneDNN and
    ONNX Runtime pick, and so every timing, depend on them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"name": platform.processor() or "unknown CPU", "flags": {}}
    lines = info.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return {"name": name or "unknown CPU", "flags": {flag: flag in flags for flag in ISA_FLAGS}}


def cpu_name() -> str:
    """The CPU's model name and whether it has AVX-512 BF16 (what --dtype auto reads)."""
    cpu = cpu_description()
    bf16 = "with" if cpu["flags"].get("avx512_bf16") else "without"
    return f"{cpu['name']}, {bf16} AVX-512 BF16"


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
