"""Where the dense vectors live: FAISS (the default) or Milvus, behind one interface.

Everything above this module (indexing, searcher, evaluation, benchmark) speaks to a
:class:`DenseBackend`: it adds and removes vectors by document key, searches with
filtered query vectors and returns ``(scores, keys)``, and describes itself for the
manifest. Row numbers, collections and server addresses stay inside.

- ``faiss``: an ``IndexIDMap2`` over any ``faiss.index_factory`` type, saved as
  ``index.faiss`` in the generation folder (GPU when faiss-gpu sees one).
- ``milvus``: a Milvus collection, in Milvus Lite inside the generation folder or on a
  Milvus server (:mod:`retriever.milvus`).

This module chooses between them: :func:`new_backend`, :func:`open_backend` and
:func:`writable_copy` read a :class:`BackendSpec` or a manifest's ``index`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retriever.errors import RetrieverError
from retriever.faiss_gpu import GpuSetting, Placed, check_gpu_limits, refuse_a_missing_gpu
from retriever.generations import ExternalParts
from retriever.index import (
    INDEX_FILE,
    DenseIndexBuilder,
    load_faiss_index,
    place_for_search,
    remove_keys,
    save_faiss_index,
    search_faiss_index,
    search_parameters_of,
    set_search_parameters,
    training_sample_size,
)
from retriever.milvus import (
    DEFAULT_COLLECTION,
    MILVUS_LITE_FILE,
    SERVER_COLLECTIONS,
    MilvusBackend,
    check_collection_name,
    milvus_index,
)

BACKENDS = ("faiss", "milvus")

# The parts backends keep outside generation folders (Milvus server collections): every
# writer hands this to the generation lifecycle, which publishes and drops them.
EXTERNAL_PARTS: ExternalParts = SERVER_COLLECTIONS


@dataclass(frozen=True)
class BackendSpec:
    """Which backend holds the dense vectors, and its index type."""

    kind: str = "faiss"
    index_type: str = "Flat"
    milvus_uri: str | None = None  # None: Milvus Lite inside the index folder
    collection: str = DEFAULT_COLLECTION
    use_gpu: GpuSetting = None

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise RetrieverError(f"unknown backend {self.kind!r}; choose {', '.join(BACKENDS)}")
        if self.kind == "milvus":
            milvus_index(self.index_type, lite=self.milvus_uri is None)
            check_collection_name(self.collection)


class DenseBackend(Protocol):
    """The interface; see the module docstring. :class:`FaissBackend` and test doubles
    inherit its defaults, :class:`retriever.milvus.MilvusBackend` matches it."""

    kind: str
    dim: int

    @property
    def count(self) -> int:
        raise NotImplementedError

    needs_training = False

    def train(self, sample: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def remove(self, keys: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, keys)``, each ``(n, k)``, best first; -1 keys pad short lists."""
        raise NotImplementedError

    def set_search_params(self, params: dict[str, int | None]) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> dict[str, Any]:
        """Write what the folder needs; returns the manifest's description."""
        raise NotImplementedError

    on_gpu = False  # a GPU FAISS index is not thread-safe: callers serialise its searches

    def close(self) -> None:
        return None


class FaissBackend(DenseBackend):
    kind = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        builder: DenseIndexBuilder | None = None,
        index: Any = None,
        use_gpu: GpuSetting = None,
        read_only: bool = False,
    ):
        self.dim = dim
        self._builder = builder
        self._index = index  # the CPU index: what is saved, changed and checked
        self._use_gpu = use_gpu
        self._read_only = read_only
        self._placed: Placed | None = None
        self._nprobe: int | None = None
        self._parameters: set[str] | None = None  # which the index takes, once placed

    @classmethod
    def new(cls, dim: int, spec: BackendSpec) -> FaissBackend:
        builder = DenseIndexBuilder(dim, spec.index_type, use_gpu=spec.use_gpu)
        return cls(dim, builder=builder, use_gpu=spec.use_gpu)

    @classmethod
    def open(cls, folder: Path, *, use_gpu: GpuSetting = None) -> FaissBackend:
        """The index in ``folder`` for searching; it moves to the GPU on the first search,
        after the search parameters are set."""
        refuse_a_missing_gpu(use_gpu)  # now, not at the first search
        index = load_faiss_index(folder)
        return cls(index.d, index=index, use_gpu=use_gpu, read_only=True)

    @property
    def index(self) -> Any:
        if self._index is None:
            self._index = self._builder.finish()
            self._builder = None
        return self._index

    @property
    def needs_training(self) -> bool:  # type: ignore[override]
        return self._builder is not None and self._builder.needs_training

    @property
    def count(self) -> int:
        return int((self._placed.index if self._placed else self.index).ntotal)

    @property
    def placement(self) -> Placed:
        """Where searches run (the index is placed on the first call)."""
        if self._placed is None:
            self._parameters = search_parameters_of(self.index)
            self._placed = place_for_search(self.index, self._use_gpu)
            if self._placed.on_gpu and self._read_only:
                # A searcher never needs the CPU copy again; on a big index it is many GiB.
                self._index = None
        return self._placed

    @property
    def on_gpu(self) -> bool:  # type: ignore[override]
        return self.placement.on_gpu

    def train(self, sample: np.ndarray) -> None:
        self._builder.train(sample)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self._builder is not None:
            self._builder.add(keys, vectors)
        else:
            self._placed = None  # searches must see the change
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys)

    def remove(self, keys: np.ndarray) -> None:
        self._placed = None
        self._index = remove_keys(self.index, keys)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        placed = self.placement
        check_gpu_limits(on_gpu=placed.on_gpu, k=k, nprobe=self._nprobe)
        return search_faiss_index(placed.index, vectors, k)

    def set_search_params(self, params: dict[str, int | None]) -> None:
        if params.get("nprobe") is not None:
            self._nprobe = params["nprobe"]
        if self._index is not None or self._builder is not None:
            # A built index that is still being assembled finishes here, so the parameters
            # reach it (set only on the builder, they were lost at its first search).
            set_search_parameters(self.index, params)  # checks the names against the type
        if self._placed is not None and self._placed.index is not self._index:
            # The GPU copy, a separate object (the CPU index above was checked and set).
            set_search_parameters(
                self._placed.index, params, applicable=self._parameters, on_gpu=True
            )

    def save(self, folder: Path) -> dict[str, Any]:
        save_faiss_index(self.index, folder)
        return {"backend": "faiss", "file": INDEX_FILE}


def new_backend(spec: BackendSpec, dim: int, folder: Path) -> DenseBackend:
    """An empty backend for a new generation being written in ``folder``."""
    if spec.kind == "milvus":
        return MilvusBackend.new(
            dim,
            folder,
            index_type=spec.index_type,
            uri=spec.milvus_uri,
            collection=spec.collection,
        )
    return FaissBackend.new(dim, spec)


def build_in_memory(spec: BackendSpec, vectors: np.ndarray, folder: Path) -> DenseBackend:
    """A backend over vectors held in memory, keys ``0..n-1`` (benchmarks), trained on a
    sample as a streamed build would be."""
    backend = new_backend(spec, vectors.shape[1], folder)
    if backend.needs_training:
        size = training_size(spec, vectors.shape[1], len(vectors))
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        backend.train(vectors[rows])
    backend.add(np.arange(len(vectors)), vectors)
    return backend


def open_backend(
    folder: Path, index: dict[str, Any], *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """The backend a manifest's ``index`` entry describes, read from ``folder``."""
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        return MilvusBackend.open(folder, description, int(index["dim"]))
    return FaissBackend.open(folder, use_gpu=use_gpu)


def writable_copy(
    base: Path, staging: Path, index: dict[str, Any], *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """The base generation's backend, to change and save into ``staging``."""
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        return MilvusBackend.copy(base, staging, index)
    return FaissBackend.open(base, use_gpu=False if use_gpu is None else use_gpu)


def training_size(spec: BackendSpec, dim: int, count: int) -> int:
    """Vectors the backend trains on (Milvus trains inside the server: none here)."""
    return training_sample_size(spec.index_type, dim, count) if spec.kind == "faiss" else 0


def backend_bytes(folder: Path, index: dict[str, Any] | None) -> int | None:
    """Bytes of the dense part in ``folder`` (None when it lives on a server)."""
    from retriever.manifest import folder_bytes

    if not index:
        return None
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        path = folder / MILVUS_LITE_FILE
        return folder_bytes(path) if description["uri"] == MILVUS_LITE_FILE else None
    return folder_bytes(folder / INDEX_FILE)
