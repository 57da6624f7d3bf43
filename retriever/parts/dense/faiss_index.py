"""FAISS vector index: built from an index_factory string, inner product on unit vectors.

Uses the GPUs when faiss was built with GPU support and one is visible, placed as
:mod:`retriever.parts.dense.gpu` says (one log line per index says where, and why on the CPU);
the index is always saved as a CPU index so that it loads anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.parts.dense.codes import l2_only
from retriever.parts.dense.faiss_install import faiss
from retriever.parts.dense.gpu import GpuSetting, Placed, place, to_cpu

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
METRIC = "inner_product"


# IVF and PQ train on a random sample of this many vectors at most (faiss warns under
# 39 per centroid; 256 per centroid is its upper guidance).
MIN_TRAINING_SAMPLE = 100_000
TRAINING_PER_CENTROID = 256


def is_binary_type(index_type: str) -> bool:
    """Whether a factory string names a binary index (``BFlat``, ``BHNSWm``, ``BIVFn``):
    codes of ``dim`` bits, searched by Hamming distance."""
    return index_type.startswith(("BFlat", "BHNSW", "BIVF"))


def factory_index(dim: int, index_type: str) -> Any:
    """An empty FAISS index of a factory string: binary, or float with inner product (L2
    for the types FAISS builds only so: their scores are mapped back by the caller)."""
    if is_binary_type(index_type):
        return faiss.index_binary_factory(dim, index_type)
    metric = faiss.METRIC_L2 if l2_only(index_type) else faiss.METRIC_INNER_PRODUCT
    return faiss.index_factory(dim, index_type, metric)


def _factory_index(dim: int, index_type: str) -> Any:
    try:
        return factory_index(dim, index_type)
    except RuntimeError as exc:
        raise RetrieverError(
            f"invalid --index-type {index_type!r} for dimension {dim}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from None


def training_sample_size(index_type: str, dim: int, count: int) -> int:
    """Vectors an index type trains on: 0 when it needs no training, else
    ``min(count, max(100,000, 256 x nlist))``."""
    index = _factory_index(dim, index_type)
    if index.is_trained:
        return 0
    ivf = _ivf_of(index)
    nlist = ivf.nlist if ivf is not None else 0
    return min(count, max(MIN_TRAINING_SAMPLE, TRAINING_PER_CENTROID * nlist))


def _ivf_of(index: Any) -> Any:
    """The IVF index inside ``index`` (float or binary), or None."""
    if isinstance(index, faiss.IndexBinary):
        index = faiss.downcast_IndexBinary(index)
        if isinstance(index, faiss.IndexBinaryIDMap):
            index = faiss.downcast_IndexBinary(index.index)
        return index if isinstance(index, faiss.IndexBinaryIVF) else None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def stores_ids(index: Any) -> bool:
    """Whether an index keeps ids itself (IVF types do, in their inverted lists).

    Those take document keys directly: wrapping them in ``IndexIDMap2`` would break
    ``remove_ids``, which shrinks the map without renumbering the IVF's row ids.
    """
    return _ivf_of(index) is not None


class DenseIndexBuilder:
    """Builds an inner-product FAISS index batch by batch, each vector under its int64 key.

    IVF types store the keys in their inverted lists. Other factory indexes (on the GPU
    when one is used) hold vectors in insertion order; :meth:`finish` wraps the CPU copy
    in ``IndexIDMap2`` with the keys. Either way searches return document keys and
    documents can be removed by key.
    """

    def __init__(
        self,
        dim: int,
        index_type: str = "Flat",
        *,
        use_gpu: GpuSetting = None,
        ef_construction: int | None = None,
    ) -> None:
        self.dim = dim
        self.index_type = index_type
        self.binary = is_binary_type(index_type)
        self._cpu = _factory_index(dim, index_type)
        self._native_ids = stores_ids(self._cpu)
        if ef_construction is not None:
            _hnsw_of(self._cpu).efConstruction = ef_construction
        # FAISS's GPU cloner takes no binary index: binary codes are built on the CPU.
        self.placed = place(self._cpu, False if self.binary else use_gpu, "build")
        self._working = self.placed.index
        self._keys: list[np.ndarray] = []

    @property
    def needs_training(self) -> bool:
        return not self._working.is_trained

    def train(self, sample: np.ndarray) -> None:
        logger.info("training %s on a sample of %d vectors", self.index_type, len(sample))
        sample = self._contiguous(sample)
        self._run(lambda: self._working.train(sample), len(sample))

    def _contiguous(self, vectors: np.ndarray) -> np.ndarray:
        """Float32 vectors, or a binary index's packed uint8 codes."""
        return np.ascontiguousarray(vectors, dtype=np.uint8 if self.binary else np.float32)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.needs_training:
            raise RetrieverError(f"{self.index_type!r} must be trained before vectors are added")
        vectors = self._contiguous(vectors)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self._native_ids:
            self._run(lambda: self._working.add_with_ids(vectors, keys), len(vectors))
        else:
            self._run(lambda: self._working.add(vectors), len(vectors))
            self._keys.append(keys)

    def _run(self, step: Any, count: int) -> None:
        try:
            step()
        except RuntimeError as exc:
            raise RetrieverError(
                f"cannot build a {self.index_type!r} index of {count} vectors of dimension "
                f"{self.dim}: {str(exc).strip().splitlines()[-1]}"
            ) from None

    def finish(self) -> Any:
        """The CPU index: the IVF index itself, or ``IndexIDMap2`` over the factory index."""
        inner = to_cpu(self._working, self.placed.on_gpu)
        if self._native_ids:
            return inner
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, dtype=np.int64)
        return wrap_with_keys(inner, keys)


def _hnsw_of(index: Any) -> Any:
    inner = _inner(index)
    if not hasattr(inner, "hnsw"):
        raise RetrieverError(
            f"--ef-construction applies to HNSW indexes; this index is {type(inner).__name__}"
        )
    return inner.hnsw


def wrap_with_keys(inner: Any, keys: np.ndarray) -> Any:
    """``IndexIDMap2`` over a filled index whose row ``i`` is the document ``keys[i]``."""
    if len(keys) != inner.ntotal:
        raise RetrieverError(f"{len(keys)} keys for an index of {inner.ntotal} vectors")
    # IndexIDMap2 must be made over an empty index: make it over a placeholder, then hand
    # it the filled one (which it owns from then on).
    if isinstance(inner, faiss.IndexBinary):
        mapped = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(inner.d))
    else:
        mapped = faiss.IndexIDMap2(faiss.IndexFlatIP(inner.d))
    mapped.index = inner
    if not isinstance(inner, faiss.IndexBinary):
        mapped.metric_type = inner.metric_type  # L2 for HNSW over RaBitQ codes
    mapped.ntotal = inner.ntotal
    mapped.is_trained = inner.is_trained
    mapped.own_fields = True
    inner.this.disown()
    faiss.copy_array_to_vector(np.ascontiguousarray(keys, dtype=np.int64), mapped.id_map)
    mapped.construct_rev_map()
    return mapped


def build_faiss_index(
    vectors: np.ndarray,
    index_type: str = "Flat",
    *,
    keys: np.ndarray | None = None,
    use_gpu: GpuSetting = None,
) -> Any:
    """An index over vectors held in memory (keys ``0..n-1`` unless given), trained on
    a sample as :func:`training_sample_size` says. Returns a CPU index."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    builder = DenseIndexBuilder(vectors.shape[1], index_type, use_gpu=use_gpu)
    if builder.needs_training:
        size = training_sample_size(index_type, vectors.shape[1], len(vectors))
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        builder.train(vectors[rows])
    builder.add(np.arange(len(vectors)) if keys is None else keys, vectors)
    return builder.finish()


def index_keys(index: Any) -> np.ndarray:
    """The document keys an index holds: an ``IndexIDMap2``'s in insertion order, an IVF
    index's list by list."""
    ivf = _ivf_of(index)
    if ivf is not None:
        lists = ivf.invlists
        return np.concatenate(
            [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(lists.nlist)
            ]
            + [np.empty(0, dtype=np.int64)]
        ).astype(np.int64)
    return faiss.vector_to_array(_downcast(index).id_map).astype(np.int64)


def _downcast(index: Any) -> Any:
    if isinstance(index, faiss.IndexBinary):
        return faiss.downcast_IndexBinary(index)
    return faiss.downcast_index(index)


def remove_keys(index: Any, keys: np.ndarray) -> Any:
    """The index without ``keys``; types that cannot remove (HNSW) are rebuilt from their
    own stored vectors minus the removed ones."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(keys):
        return index
    try:
        index.remove_ids(keys)
        return index
    except RuntimeError:
        pass
    inner = _inner(index)
    held = index_keys(index)
    keep = ~np.isin(held, keys)
    vectors = inner.reconstruct_n(0, inner.ntotal)[keep]
    binary = isinstance(inner, faiss.IndexBinary)
    fresh = faiss.clone_binary_index(inner) if binary else faiss.clone_index(inner)
    fresh.reset()
    fresh.add(vectors)
    return wrap_with_keys(fresh, held[keep])


SEARCH_PARAMETERS = {"nprobe": "IVF", "efSearch": "HNSW"}


def set_search_parameters(
    index: Any,
    params: dict[str, int | None],
    *,
    applicable: set[str] | None = None,
    on_gpu: bool = False,
) -> None:
    """Apply ``{"nprobe": n, "efSearch": n}`` (``None`` leaves one as it is).

    ``on_gpu``: the index is a GPU one (or replicas or shards of them), which takes its
    parameters through faiss's GPU parameter space and cannot say which it takes:
    ``applicable`` names them, read from its CPU original with :func:`search_parameters_of`.
    """
    for name, value in params.items():
        if value is None:
            continue
        if name not in (search_parameters_of(index) if applicable is None else applicable):
            raise RetrieverError(
                f"{name} applies to {SEARCH_PARAMETERS[name]} indexes; this index is "
                f"{type(_inner(index)).__name__}"
            )
        _set_parameter(index, name, int(value), on_gpu=on_gpu)


def _set_parameter(index: Any, name: str, value: int, *, on_gpu: bool) -> None:
    if isinstance(index, faiss.IndexBinary):  # FAISS's parameter spaces take no binary index
        if name == "nprobe":
            _ivf_of(index).nprobe = value
        else:
            _inner(index).hnsw.efSearch = value
        return
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    space.set_index_parameter(index, name, value)


def search_parameters_of(index: Any) -> set[str]:
    """The search parameters a CPU index takes."""
    return {name for name in SEARCH_PARAMETERS if has_parameter(index, name)}


def _inner(index: Any) -> Any:
    """The index under an id map (downcast to its own type)."""
    index = _downcast(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexBinaryIDMap)):
        return _downcast(index.index)
    return index


def has_parameter(index: Any, name: str) -> bool:
    if name == "nprobe":
        return _ivf_of(index) is not None
    return hasattr(_inner(index), "hnsw")


def save_faiss_index(index: Any, folder: Path) -> Path:
    path = folder / INDEX_FILE
    if isinstance(index, faiss.IndexBinary):
        faiss.write_index_binary(index, str(path))
    else:
        faiss.write_index(index, str(path))
    return path


def load_faiss_index(folder: Path, *, binary: bool = False) -> Any:
    """The CPU index saved in ``folder`` (``binary``: a binary index)."""
    try:
        if binary:
            return faiss.read_index_binary(str(folder / INDEX_FILE))
        return faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as exc:
        kind = "a binary" if binary else "a float"
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise RetrieverError(
            f"cannot read {folder / INDEX_FILE} as {kind} FAISS index, as its manifest says "
            f"it is ({reason}); rebuild the index"
        ) from None


def place_for_search(index: Any, use_gpu: GpuSetting = None) -> Placed:
    """A CPU index moved where searches should run (see :func:`retriever.parts.dense.gpu.place`);
    binary indexes stay on the CPU (FAISS's GPU cloner takes none)."""
    binary = isinstance(index, faiss.IndexBinary)
    return place(index, False if binary else use_gpu, "search")


def search_faiss_index(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, keys)``, each ``(n, k)``; keys are -1 where fewer than k hits exist. A
    binary index takes packed codes and gives Hamming distances (smaller is closer)."""
    binary = isinstance(index, faiss.IndexBinary)
    return index.search(np.ascontiguousarray(queries, np.uint8 if binary else np.float32), k)
