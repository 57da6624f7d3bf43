"""FAISS vector index: built from an index_factory string, inner product on unit vectors.

Uses a GPU when faiss was built with GPU support and one is visible (one log line says
which); the index is always saved as a CPU index so that it loads anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from retriever.errors import RetrieverError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
METRIC = "inner_product"


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


_announced: set[str] = set()


def _announce(purpose: str, where: str) -> None:
    """Say once per process where FAISS builds or searches (a benchmark builds many)."""
    if purpose not in _announced:
        _announced.add(purpose)
        logger.info("faiss %s on %s", purpose, where)


def _to_gpu(index: faiss.Index, use_gpu: bool | None, purpose: str) -> faiss.Index:
    if use_gpu is False or gpu_count() == 0:
        if use_gpu:
            raise RetrieverError("a GPU index was asked for, but faiss sees no GPU")
        reason = "faiss-gpu not installed or no GPU visible" if use_gpu is None else "GPU off"
        _announce(purpose, f"CPU ({reason})")
        return index
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:  # not every index type has a GPU implementation
        if use_gpu:
            raise RetrieverError(f"this index type cannot run on the GPU: {exc}") from exc
        _announce(purpose, "CPU (this index type has no GPU version)")
        return index
    _announce(purpose, f"{gpu_count()} GPU(s)")
    return gpu_index


def build_faiss_index(
    vectors: np.ndarray, index_type: str = "Flat", *, use_gpu: bool | None = None
) -> faiss.Index:
    """Build (and train, when the type needs it) an inner-product index over ``vectors``.

    ``index_type`` is a ``faiss.index_factory`` string such as ``Flat``, ``HNSW32`` or
    ``IVF256,PQ16``. Returns a CPU index.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        index = faiss.index_factory(vectors.shape[1], index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise RetrieverError(
            f"invalid --index-type {index_type!r} for dimension {vectors.shape[1]}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from None
    working = _to_gpu(index, use_gpu, "build")
    try:
        if not working.is_trained:
            logger.info("training %s on %d vectors", index_type, len(vectors))
            working.train(vectors)
        working.add(vectors)
    except RuntimeError as exc:
        raise RetrieverError(
            f"cannot build a {index_type!r} index over {len(vectors)} vectors of dimension "
            f"{vectors.shape[1]}: {str(exc).strip().splitlines()[-1]}"
        ) from None
    return faiss.index_gpu_to_cpu(working) if working is not index else index


def save_faiss_index(index: faiss.Index, folder: Path) -> Path:
    path = folder / INDEX_FILE
    faiss.write_index(index, str(path))
    return path


def load_faiss_index(folder: Path, *, use_gpu: bool | None = None) -> faiss.Index:
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as exc:
        raise RetrieverError(f"cannot read {folder / INDEX_FILE}: {exc}") from None
    return _to_gpu(index, use_gpu, "search")


def search_faiss_index(
    index: faiss.Index, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, each ``(n, k)``; rows are -1 where fewer than k hits exist."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
