"""ONNX Runtime for the encoder's forward pass on CPU (``--runtime onnx``).

Measured against torch float32 on SciFact documents (``benchmarks/cpu_runtime.py``; the
figures are in docs/builds.md): the same token ids in, cosine to torch's pooled vectors
at least 0.9999, and faster on the CPU measured, so it is offered behind a flag for
float32 builds on CPUs without bfloat16. Only the transformer runs in ONNX Runtime: the
Encoder's own preparation, batching, padding and pooling stay as they are.

The model is exported once per weights (torch's TorchScript exporter, opset
:data:`OPSET`) into the cache's ``onnx/`` folder, named by the weights' sha256, and
reused by every later load. Needs ``pip install 'retriever[onnx]'``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from retriever.core.errors import RetrieverError

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")
# Fixed so that every export of one model is the same graph; the TorchScript exporter
# covers every op of a Llama-style decoder at 17.
OPSET = 17
# A single ONNX protobuf holds at most 2 GiB; larger models would need external data.
_PROTOBUF_LIMIT = 2**31


def require_onnx() -> None:
    """Refuse in one line when the ``onnx`` extra is missing (the exporter needs onnx)."""
    missing = []
    for module in ("onnxruntime", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise RetrieverError(
            f"--runtime onnx needs {' and '.join(missing)}: pip install 'retriever[onnx]'"
        )


class LastHiddenState(torch.nn.Module):
    """The base transformer as the Encoder calls it, with one tensor out and no key/value
    cache (nothing reads it)."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def export_model(base: torch.nn.Module, path: Path) -> dict[str, Any]:
    """Export ``base`` (float32) to ``path``, atomically; returns the export's seconds,
    size and the exporter's distinct warnings.

    The TorchScript exporter (``dynamo=False``): the torch.export-based default needs the
    onnxscript package besides. It traces one example, which has a padded row, so the
    traced graph is the one that applies the attention mask."""
    ids = torch.arange(2, 10).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    axes = {0: "batch", 1: "sequence"}
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            LastHiddenState(base).eval(),
            (ids, mask),
            str(staging),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=OPSET,
        )
    os.replace(staging, path)
    seen = sorted(
        {
            f"{w.category.__name__} at {Path(w.filename).name}:{w.lineno}: "
            f"{str(w.message).splitlines()[0][:160]}"
            for w in caught
        }
    )
    seconds = round(time.perf_counter() - started, 2)
    return {"seconds": seconds, "opset": OPSET, "bytes": path.stat().st_size, "warnings": seen}


def cpu_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation, one node at a time on
    ``threads`` intra-op threads, as torch's eager forward uses its threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxForward:
    """``(input_ids, attention_mask) -> last_hidden_state`` through ONNX Runtime."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return torch.from_numpy(hidden)


def onnx_forward(base: torch.nn.Module, weights_sha256: str, cache: Path) -> OnnxForward:
    """The forward pass of ``base`` in ONNX Runtime, exported into ``cache`` on first use."""
    require_onnx()
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    if size >= _PROTOBUF_LIMIT:
        raise RetrieverError(
            f"--runtime onnx exports models under 2 GiB; this one has {size / 2**30:.1f} GiB "
            "of weights: use --runtime torch"
        )
    path = cache / f"{weights_sha256[:24]}-opset{OPSET}.onnx"
    if not path.is_file():
        logger.info("exporting the model to ONNX once: %s", path)
        info = export_model(base, path)
        logger.info("exported in %.1f s (%d MiB)", info["seconds"], info["bytes"] >> 20)
    return OnnxForward(cpu_session(path, torch.get_num_threads()))
