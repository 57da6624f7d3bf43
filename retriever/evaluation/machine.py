"""The machine a result was measured on: one record, written into every results file.

Timings on two CPUs differ by 3x and more (AVX-512 BF16 against AVX2 alone), and a dtype
or a quantized checkpoint moves quality. So every benchmark and ``retriever bench``
stores :func:`machine_record` under ``"machine"`` and prints :func:`machine_line` under
its title, and two figures are compared only when :func:`same_machine` holds for their
records (``tests/test_docs.py`` checks the docs against this).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from retriever.core.versions import installed_version

# The instruction sets that decide which kernels torch, oneDNN, FAISS and ONNX Runtime pick.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")
# Libraries whose version changes a timing or a score: distribution names, first found.
LIBRARIES = {
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss"),
    "transformers": ("transformers",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}
# What makes two records one machine: the hardware, not the library versions.
MACHINE_KEYS = ("cpu", "cpu_flags", "cores", "memory_gib", "gpu")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return name or platform.machine(), set(flags)


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return round(pages * page_size / 2**30, 1)


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _library_versions() -> dict[str, str | None]:
    return {library: installed_version(*names) for library, names in LIBRARIES.items()}


def machine_record(
    *, dtype: str | None = None, weights: dict[str, Any] | None = None
) -> dict[str, Any]:
    """This machine, the libraries' versions, and what the measured model ran as: its
    ``dtype`` and ``weights`` (:func:`retriever.encode.weights.weights_origin`; None
    for a benchmark that runs no model)."""
    name, flags = _cpuinfo()
    return {
        "cpu": name,
        "cpu_flags": {
            flag: any(f.startswith("amx") for f in flags) if flag == "amx" else flag in flags
            for flag in CPU_FLAGS
        },
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "versions": _library_versions(),
        "dtype": dtype,
        "weights": weights,
    }


def encoder_machine_record(encoder: Any) -> dict[str, Any]:
    """:func:`machine_record` for a loaded :class:`~retriever.encode.encoder.Encoder`."""
    from retriever.encode.weights import weights_origin

    dtype = str(encoder.dtype).removeprefix("torch.")
    return machine_record(dtype=dtype, weights=weights_origin(encoder.resolved))


def folder_machine_record(folder: Path) -> dict[str, Any] | None:
    """The machine record a results folder holds: the first of its JSON files with one,
    top-level or under ``"meta"`` (None for a folder written before records existed)."""
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(record, dict):
            meta = record.get("meta")
            machine = record.get("machine")
            if not isinstance(machine, dict) and isinstance(meta, dict):
                machine = meta.get("machine")
            if isinstance(machine, dict):
                return machine
    return None


def same_machine(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two records name one machine (:data:`MACHINE_KEYS`): figures from them may
    be compared."""
    return all(first.get(key) == second.get(key) for key in MACHINE_KEYS)


def machine_line(record: dict[str, Any]) -> str:
    """The record in one line, for under a results page's title."""
    flags = record.get("cpu_flags", {})
    has = [flag for flag, present in flags.items() if present]
    lacks = [flag for flag, present in flags.items() if not present]
    cpu = f"{record['cpu']} ({', '.join(has) or 'none of ' + ', '.join(CPU_FLAGS)}"
    cpu += f"; no {', '.join(lacks)})" if lacks and has else ")"
    parts = [f"{cpu}, {record['cores']} cores, {record['memory_gib']} GiB"]
    if record.get("gpu"):
        parts.append(f"GPU {record['gpu']}")
    versions = record.get("versions", {})
    parts.append(", ".join(f"{name} {v}" for name, v in versions.items() if v))
    if record.get("dtype"):
        parts.append(f"run in {record['dtype']}")
    weights = record.get("weights")
    if weights:
        parts.append(
            f"weights {weights['file']} (quantization {weights['quantization']}; "
            f"{weights['format']})"
        )
    return "Machine: " + "; ".join(parts) + "."
