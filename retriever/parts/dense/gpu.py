"""Where a FAISS index runs: on which GPUs, replicated or sharded, or on the CPU and why.

A GPU FAISS user expects one ``StandardGpuResources`` per GPU per process (each holds
scratch memory and streams; making one per index exhausts a GPU), a choice of GPUs, a
choice between replicas (throughput: every GPU holds the whole index) and shards (an index
larger than one GPU), float16 where it costs no accuracy that matters, and a fallback to
the CPU that says why. Everything here is a no-op with faiss-cpu.

GPU FAISS limits that would otherwise end in a raw FAISS assertion are checked here,
before FAISS sees them: at most ``GPU_MAX_K`` hits per query and ``GPU_MAX_K`` probes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.parts.dense.faiss_install import faiss

logger = logging.getLogger(__name__)

# faiss/gpu/utils/DeviceDefs.cuh: GPU_MAX_SELECTION_K (k-selection in shared memory).
GPU_MAX_K = 2048
PLACEMENTS = ("replicate", "shard")


@dataclass(frozen=True)
class GpuOptions:
    """How FAISS indexes use GPUs.

    ``enabled``: None uses the GPUs when faiss-gpu sees one, True requires one, False
    keeps the CPU. ``ids``: which GPUs (None: all visible). ``placement``: ``replicate``
    (each GPU holds the index; batches are split between them) or ``shard`` (each holds a
    slice; for an index larger than one GPU). ``float16``: store vectors in float16 on
    the GPU (halves memory; scores change in the 3rd-4th digit); PQ types always use
    float16 lookup tables, which their shared-memory budget needs from M = 48 on.
    """

    enabled: bool | None = None
    ids: tuple[int, ...] | None = None
    placement: str = "replicate"
    float16: bool = False

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise RetrieverError(
                f"unknown GPU placement {self.placement!r}; choose {', '.join(PLACEMENTS)}"
            )
        if self.ids is not None and (not self.ids or min(self.ids) < 0):
            raise RetrieverError(f"--gpu-ids must be GPU numbers 0, 1, ...; got {self.ids}")


GpuSetting = GpuOptions | bool | None


def gpu_options(setting: GpuSetting) -> GpuOptions:
    """``use_gpu`` as the API has always taken it (None, True, False), or full options."""
    return setting if isinstance(setting, GpuOptions) else GpuOptions(enabled=setting)


def parse_gpu_ids(text: str) -> tuple[int, ...]:
    """``"0,2"`` as ``(0, 2)``, refused in one line when it is not a list of numbers."""
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise RetrieverError(f"--gpu-ids takes GPU numbers like 0,1; got {text!r}") from None
    return GpuOptions(ids=ids).ids or ()


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


_resources: dict[int, Any] = {}
_resources_lock = threading.Lock()


def gpu_resources(device: int) -> Any:
    """This process's one ``StandardGpuResources`` for GPU ``device``."""
    with _resources_lock:
        if device not in _resources:
            _resources[device] = faiss.StandardGpuResources()
        return _resources[device]


@dataclass
class Placed:
    """An index where it runs, and a line saying where (and why, on the CPU)."""

    index: Any
    on_gpu: bool
    where: str


def refuse_a_missing_gpu(setting: GpuSetting) -> None:
    """Refuse ``--gpu`` (a GPU required) when faiss sees none, before anything loads."""
    if gpu_options(setting).enabled and gpu_count() == 0:
        raise RetrieverError(
            "a GPU index was asked for (--gpu), but faiss sees no GPU"
            + ("" if hasattr(faiss, "StandardGpuResources") else ": faiss-cpu is installed")
        )


def place(index: Any, setting: GpuSetting, purpose: str) -> Placed:
    """``index`` (a CPU index) moved where ``setting`` says, or left on the CPU with the
    reason logged. ``purpose`` names the step in the log ("build", "search")."""
    options = gpu_options(setting)
    refuse_a_missing_gpu(options)
    available = gpu_count()
    if options.enabled is False or available == 0:
        if options.enabled is False:
            reason = "GPU off"
        elif hasattr(faiss, "StandardGpuResources"):
            reason = "no GPU visible"
        else:
            reason = "faiss-cpu installed"
        return _on_cpu(index, purpose, reason, warn=False)
    ids = options.ids if options.ids is not None else tuple(range(available))
    missing = [i for i in ids if i >= available]
    if missing:
        raise RetrieverError(f"--gpu-ids {missing} not visible: faiss sees {available} GPU(s)")
    cloner = faiss.GpuMultipleClonerOptions()
    cloner.shard = options.placement == "shard" and len(ids) > 1
    # For IVF-PQ this flag means float16 lookup tables, without which M >= 48 exceeds a
    # GPU's shared memory; for Flat and IVF-Flat it means float16 storage.
    cloner.useFloat16 = options.float16 or _has_pq(index)
    try:
        moved = faiss.index_cpu_to_gpu_multiple_py(
            [gpu_resources(i) for i in ids], index, cloner, list(ids)
        )
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if options.enabled:
            raise RetrieverError(f"this index cannot run on the GPU: {reason}") from None
        return _on_cpu(index, purpose, reason, warn=True)
    mode = "sharded" if cloner.shard else "replicated" if len(ids) > 1 else "one GPU"
    where = f"GPU {','.join(map(str, ids))} ({mode}{', float16' if cloner.useFloat16 else ''})"
    logger.info("faiss %s on %s", purpose, where)
    return Placed(moved, True, where)


_said: set[str] = set()


def _on_cpu(index: Any, purpose: str, reason: str, *, warn: bool) -> Placed:
    where = f"CPU ({reason})"
    if warn:
        # A fallback is said for every index: a benchmark places many, and the third's
        # must not hide behind the first one's line.
        logger.warning("faiss %s on %s", purpose, where)
    elif f"{purpose} {where}" not in _said:
        # No GPU at all: nothing the user chose or could change, so not on the console.
        _said.add(f"{purpose} {where}")
        logger.debug("faiss %s on %s", purpose, where)
    return Placed(index, False, where)


def _has_pq(index: Any) -> bool:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ)


def to_cpu(index: Any, on_gpu: bool) -> Any:
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def check_gpu_limits(*, on_gpu: bool, k: int | None = None, nprobe: int | None = None) -> None:
    """Refuse what GPU FAISS cannot do, in one line, before it asserts."""
    if not on_gpu:
        return
    if k is not None and k > GPU_MAX_K:
        raise RetrieverError(
            f"k = {k}: GPU FAISS returns at most {GPU_MAX_K} hits per query; lower k, or "
            "search on the CPU (--no-gpu)"
        )
    if nprobe is not None and nprobe > GPU_MAX_K:
        raise RetrieverError(
            f"nprobe = {nprobe}: GPU FAISS probes at most {GPU_MAX_K} lists; lower --nprobe, "
            "or search on the CPU (--no-gpu)"
        )
