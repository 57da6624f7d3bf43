"""Bytes on disk, measured and shown."""

from __future__ import annotations

from pathlib import Path


def folder_bytes(path: Path) -> int:
    """The bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def size_text(size: float) -> str:
    """Bytes in the largest binary unit that keeps one digit before the point."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{int(size)} B"
