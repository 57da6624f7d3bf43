"""Which weights an encoder runs, in the words a results table prints: the file they came
from and how it was quantized.

The bundled model is a GGUF file of 4-bit blocks (Q4_1) that the project dequantises to
float32 once. Running it in float32 or bfloat16 does not bring back what the 4-bit
rounding lost, so a figure measured on it is a figure of the quantized model, and every
results file says so.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

from retriever.encode.models import ResolvedModel, weight_files

# GGUF metadata value types: struct formats of the fixed-size ones; 8 is a string and 9
# an array (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _skip_value(handle: BinaryIO, kind: int) -> None:
    if kind in _GGUF_SCALARS:
        handle.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
    elif kind == _GGUF_STRING:
        handle.seek(_read(handle, "<Q"), 1)
    elif kind == _GGUF_ARRAY:
        inner, count = _read(handle, "<I"), _read(handle, "<Q")
        if inner in _GGUF_SCALARS:
            handle.seek(count * struct.calcsize(_GGUF_SCALARS[inner]), 1)
        else:
            for _ in range(count):
                _skip_value(handle, inner)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_file_type(path: Path) -> int | None:
    """The ``general.file_type`` a GGUF file's header declares (which quantization most
    of its tensors use), or None when it declares none. Reads the header only."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _read(handle, "<I")  # format version
        _read(handle, "<Q")  # tensor count
        for _ in range(_read(handle, "<Q")):
            key = handle.read(_read(handle, "<Q")).decode("utf-8", "replace")
            kind = _read(handle, "<I")
            if key == "general.file_type" and kind in _GGUF_SCALARS:
                return int(_read(handle, _GGUF_SCALARS[kind]))
            _skip_value(handle, kind)
    return None


def gguf_quantization(path: Path) -> str:
    """A GGUF file's quantization by its llama.cpp name (``Q4_1``, ``F16``)."""
    try:
        file_type = gguf_file_type(path)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if file_type is None:
        return "not declared"
    try:
        from gguf import LlamaFileType

        return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except (ImportError, ValueError):
        return f"GGUF file type {file_type}"


def _folder_precision(folder: Path) -> str:
    """What a transformers folder's config says its weights are: a quantization method,
    or the dtype they were saved in."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "not declared"
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and quantization.get("quant_method"):
        return str(quantization["quant_method"])
    dtype = config.get("torch_dtype") or config.get("dtype")
    return f"none ({dtype} weights)" if dtype else "none"


def weights_origin(resolved: ResolvedModel) -> dict[str, Any]:
    """The weights a model runs: its name, the file they came from, their quantization
    and the hash the index manifest pins."""
    if resolved.source is not None:
        file, quantization = resolved.source.name, gguf_quantization(resolved.source)
        kind = "GGUF, dequantised to float32 once"
    else:
        file = ", ".join(p.name for p in weight_files(resolved.path))
        quantization, kind = _folder_precision(resolved.path), "transformers folder"
    return {
        "model": resolved.name,
        "file": file,
        "format": kind,
        "quantization": quantization,
        "weights_sha256": resolved.weights_sha256,
    }
