"""Where the dense vectors live: FAISS (the default) or Milvus, behind one interface.

Everything above this module (indexing, searcher, evaluation, benchmark) speaks to a
:class:`DenseBackend`: it adds and removes vectors by document key, searches with
filtered query vectors and returns ``(scores, keys)``, and describes itself for the
manifest. Row numbers, collections and server addresses stay inside.

- ``faiss``: an ``IndexIDMap2`` over any ``faiss.index_factory`` type, saved as
  ``index.faiss`` in the generation folder (GPU when faiss-gpu sees one).
- ``milvus``: a Milvus collection, in Milvus Lite inside the generation folder or on a
  Milvus server (:mod:`retriever.parts.dense.milvus`).

This module chooses between them: :func:`new_backend` reads a
:class:`~retriever.core.spec.DenseSpec`, :func:`open_backend` and :func:`writable_copy`
the description a backend saved in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.generations import ExternalParts
from retriever.core.spec import DenseSpec, SearchParams
from retriever.parts.dense.codes import (
    BINARY_CENTRE_FILE,
    RESCORE_FILES,
    TRAINING_SAMPLE,
    BinaryCodes,
    RescoreVectors,
    binary_bits,
    codes_of,
    layout_of,
    rabitq_bits_of,
)
from retriever.parts.dense.faiss_index import (
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
from retriever.parts.dense.faiss_install import faiss
from retriever.parts.dense.gpu import GpuSetting, Placed, check_gpu_limits, refuse_a_missing_gpu
from retriever.parts.dense.milvus import (
    MILVUS_LITE_FILE,
    SERVER_COLLECTIONS,
    MilvusBackend,
    check_collection_name,
    milvus_index,
)

# The parts backends keep outside generation folders (Milvus server collections): every
# writer hands this to the generation lifecycle, which publishes and drops them.
EXTERNAL_PARTS: ExternalParts = SERVER_COLLECTIONS


def check_dense_spec(spec: DenseSpec) -> None:
    """The checks of a dense spec that need its backend's vocabulary: a Milvus index name
    and collection, and rescoring only over compact codes."""
    if spec.backend == "milvus":
        milvus_index(
            spec.index_type,
            lite=spec.milvus_uri is None,
            storage=spec.storage,
            ef_construction=spec.ef_construction,
        )
        check_collection_name(spec.collection)
        return
    layout = layout_of(spec.index_type, spec.storage, spec.rabitq_bits)
    if spec.rescore_precision and layout.storage not in ("int8", "binary", "rabitq"):
        raise RetrieverError(
            f"--rescore re-scores compact codes; {layout.storage} codes are not "
            "compact: use it with --storage int8, binary or rabitq"
        )


class DenseBackend(Protocol):
    """The interface; see the module docstring. :class:`FaissBackend` and test doubles
    inherit its defaults, :class:`retriever.parts.dense.milvus.MilvusBackend` matches it."""

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
    """A FAISS index of the filtered vectors' codes, plus the binary centre and the rescore
    vectors when the storage has them. Callers always hand it float vectors: it encodes
    them for a binary index, and its scores are similarities (higher is closer) whatever
    the codes."""

    kind = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        builder: DenseIndexBuilder | None = None,
        index: Any = None,
        use_gpu: GpuSetting = None,
        read_only: bool = False,
        storage: Storage | None = None,
    ):
        self.dim = dim
        self._builder = builder
        self._index = index  # the CPU index: what is saved, changed and checked
        self._use_gpu = use_gpu
        self._read_only = read_only
        self._placed: Placed | None = None
        self._nprobe: int | None = None
        self._parameters: set[str] | None = None  # which the index takes, once placed
        self.storage = storage or Storage("float32")
        self._rescore_factor: int | None = None

    @classmethod
    def new(cls, dim: int, spec: DenseSpec, use_gpu: GpuSetting = None) -> FaissBackend:
        layout = layout_of(spec.index_type, spec.storage, spec.rabitq_bits)
        width = binary_bits(dim) if layout.binary else dim
        builder = DenseIndexBuilder(
            width, layout.factory, use_gpu=use_gpu, ef_construction=spec.ef_construction
        )
        # A zero centre needs no data; a centre from the documents is fitted on the sample.
        zero = BinaryCodes(np.zeros(dim), "zero") if spec.binary_centre == "zero" else None
        storage = Storage(
            layout.storage,
            binary_centre=spec.binary_centre if layout.binary else None,
            wants_rescore=spec.rescore_precision,
            binary=zero if layout.binary else None,
            l2=layout.l2,
        )
        return cls(dim, builder=builder, use_gpu=use_gpu, storage=storage)

    @classmethod
    def open(
        cls, folder: Path, description: dict[str, Any], dim: int, *, use_gpu: GpuSetting = None
    ) -> FaissBackend:
        """The index in ``folder`` for searching, checked against its manifest
        ``description``; it moves to the GPU on the first search, after the search
        parameters are set."""
        refuse_a_missing_gpu(use_gpu)  # now, not at the first search
        storage = Storage.read(folder, description, dim)
        index = load_faiss_index(folder, binary=storage.binary is not None)
        storage.check(index, folder)
        # The file's own dimension, which the searcher checks against the filter's.
        held = dim if storage.binary is not None and index.d == binary_bits(dim) else index.d
        return cls(held, index=index, use_gpu=use_gpu, read_only=True, storage=storage)

    @property
    def index(self) -> Any:
        if self._index is None:
            self._index = self._builder.finish()
            self._builder = None
        return self._index

    @property
    def needs_training(self) -> bool:  # type: ignore[override]
        return self._builder is not None and (
            self._builder.needs_training or self.storage.needs_training
        )

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
        self.storage.train(sample)
        if self._builder.needs_training:
            self._builder.train(self.storage.encode(sample))

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.storage.add(keys, vectors)
        codes = self.storage.encode(vectors)
        if self._builder is not None:
            self._builder.add(keys, codes)
        else:
            self._placed = None  # searches must see the change
            self.index.add_with_ids(codes, np.ascontiguousarray(keys, dtype=np.int64))

    def remove(self, keys: np.ndarray) -> None:
        self._placed = None
        self._index = remove_keys(self.index, keys)
        self.storage.remove(keys)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        placed = self.placement
        rescore = self.storage.rescore is not None and self._rescore_factor
        depth = min(k * self._rescore_factor, self.count) if rescore else k
        depth = max(depth, k)
        check_gpu_limits(on_gpu=placed.on_gpu, k=depth, nprobe=self._nprobe)
        scores, keys = search_faiss_index(placed.index, self.storage.encode(vectors), depth)
        if rescore:
            return self.storage.rescore.rerank(vectors, keys, k)
        return self.storage.similarity(scores), keys

    def set_search_params(self, params: dict[str, int | None]) -> None:
        SearchParams.from_faiss(params)
        params = dict(params)
        rescore = params.pop("rescore", None)
        if rescore is not None:
            self._rescore_factor = self.storage.check_rescore(rescore)
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
        return {"backend": "faiss", "file": INDEX_FILE, **self.storage.save(folder, self.index)}


class Storage:
    """What a FAISS backend keeps beside its index for its codes: the binary centre and
    the rescore vectors (either may be absent), fitted on the training sample; and
    whether the index scores by L2 distance (mapped back to inner products)."""

    def __init__(
        self,
        codes: str | None,
        *,
        binary_centre: str | None = None,
        wants_rescore: str | None = None,
        binary: BinaryCodes | None = None,
        rescore: RescoreVectors | None = None,
        l2: bool = False,
        bits: int | None = None,
    ) -> None:
        self.codes = codes
        self.l2 = l2
        self.bits = bits  # of RaBitQ codes, as the manifest says (checked against the file)
        self.binary_centre = binary_centre
        self.wants_rescore = wants_rescore or (rescore.precision if rescore else None)
        self.binary = binary
        self.rescore = rescore
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        self._removed: list[np.ndarray] = []

    @property
    def needs_training(self) -> bool:
        return (self.binary_centre is not None and self.binary is None) or (
            self.wants_rescore and self.rescore is None
        )

    def train(self, sample: np.ndarray) -> None:
        if self.binary_centre is not None and self.binary is None:
            self.binary = BinaryCodes.fit(sample, self.binary_centre)
        if self.wants_rescore and self.rescore is None:
            self.rescore = RescoreVectors.fit(sample, self.wants_rescore)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return self.binary.encode(vectors) if self.binary is not None else vectors

    def similarity(self, scores: np.ndarray) -> np.ndarray:
        """Scores as similarities: Hamming distances of binary codes mapped to cosines,
        squared L2 distances of unit vectors to inner products (``1 - d / 2``)."""
        if self.binary is not None:
            return self.binary.similarity(scores)
        return 1.0 - scores / 2.0 if self.l2 else scores

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.rescore is not None:
            self._added.append((np.asarray(keys, dtype=np.int64), np.asarray(vectors)))

    def remove(self, keys: np.ndarray) -> None:
        if self.rescore is not None:
            self._removed.append(np.asarray(keys, dtype=np.int64))

    def check_rescore(self, factor: int) -> int:
        if self.rescore is None and not self.wants_rescore:
            raise RetrieverError(
                "--rescore applies to an index built with --rescore (it keeps the int8 "
                "vectors the second stage reads)"
            )
        return int(factor)

    def save(self, folder: Path, index: Any) -> dict[str, Any]:
        """Write the centre and the rescore vectors; the manifest's description of them."""
        described: dict[str, Any] = {"storage": codes_of(index), "rescore": False}
        if described["storage"] == "rabitq":
            described["bits"] = rabitq_bits_of(index)
        if self.l2:
            described["metric"] = "l2"
        if self.binary is not None:
            self.binary.save(folder)
            described["binary_centre"] = self.binary.centre_from
        if self.rescore is not None:
            removed = np.concatenate(self._removed) if self._removed else np.empty(0, np.int64)
            self.rescore = self.rescore.changed(self._added, removed)
            self._added, self._removed = [], []
            self.rescore.save(folder)
            described["rescore"] = self.rescore.precision
        return described

    @classmethod
    def read(cls, folder: Path, description: dict[str, Any], dim: int) -> Storage:
        codes = description.get("storage")  # None: written before storage was recorded
        binary = None
        if codes == "binary":
            binary = BinaryCodes.load(folder, description.get("binary_centre", "documents"), dim)
        rescore = RescoreVectors.load(folder, dim) if description.get("rescore") else None
        l2 = description.get("metric") == "l2"
        return cls(codes, binary=binary, rescore=rescore, l2=l2, bits=description.get("bits"))

    def check(self, index: Any, folder: Path) -> None:
        """The index file must hold the codes the manifest names, the rescore vectors one
        per document."""
        held = codes_of(index)
        if self.codes is not None and held != self.codes:
            raise RetrieverError(
                f"{folder} is inconsistent: its manifest says {self.codes} storage, its "
                f"index file holds {held} codes; rebuild the index"
            )
        bits = rabitq_bits_of(index)
        if self.codes == "rabitq" and bits != self.bits:
            raise RetrieverError(
                f"{folder} is inconsistent: its manifest says {self.bits}-bit RaBitQ codes, "
                f"its index file holds {bits}-bit ones; rebuild the index"
            )
        l2 = not isinstance(index, faiss.IndexBinary) and index.metric_type == faiss.METRIC_L2
        if l2 != self.l2:
            raise RetrieverError(
                f"{folder} is inconsistent: its manifest and its index file disagree on the "
                "metric (L2 or inner product); rebuild the index"
            )
        if self.rescore is not None and self.rescore.count != index.ntotal:
            raise RetrieverError(
                f"{folder} is inconsistent: {self.rescore.count} rescore vectors for an index "
                f"of {index.ntotal}; rebuild the index"
            )


def new_backend(
    spec: DenseSpec, dim: int, folder: Path, *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """An empty backend for a new generation being written in ``folder``."""
    check_dense_spec(spec)
    if spec.backend == "milvus":
        return MilvusBackend.new(dim, folder, spec)
    return FaissBackend.new(dim, spec, use_gpu)


def build_in_memory(
    spec: DenseSpec, vectors: np.ndarray, folder: Path, *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """A backend over vectors held in memory, keys ``0..n-1`` (benchmarks), trained on a
    sample as a streamed build would be."""
    backend = new_backend(spec, vectors.shape[1], folder, use_gpu=use_gpu)
    if backend.needs_training:
        size = training_size(spec, vectors.shape[1], len(vectors))
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        backend.train(vectors[rows])
    backend.add(np.arange(len(vectors)), vectors)
    return backend


def open_backend(
    folder: Path, description: dict[str, Any], dim: int, *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """The backend a manifest's description says ``folder`` holds, for searching."""
    if description.get("backend") == "milvus":
        return MilvusBackend.open(folder, description, dim)
    return FaissBackend.open(folder, description, dim, use_gpu=use_gpu)


def writable_copy(
    base: Path,
    staging: Path,
    spec: DenseSpec,
    description: dict[str, Any],
    dim: int,
    *,
    use_gpu: GpuSetting = None,
) -> DenseBackend:
    """The base generation's backend (``description`` of ``spec``), to change and save
    into ``staging``."""
    if description.get("backend") == "milvus":
        return MilvusBackend.copy(base, staging, spec, description, dim)
    gpu = False if use_gpu is None else use_gpu
    return FaissBackend.open(base, description, dim, use_gpu=gpu)


def training_size(spec: DenseSpec, dim: int, count: int) -> int:
    """Vectors the backend trains on (Milvus trains inside the server: none here): what
    the FAISS index needs, and up to ``TRAINING_SAMPLE`` for int8 ranges, a binary centre
    from the documents or the rescore vectors' ranges."""
    if spec.backend != "faiss":
        return 0
    layout = layout_of(spec.index_type, spec.storage, spec.rabitq_bits)
    width = binary_bits(dim) if layout.binary else dim
    size = training_sample_size(layout.factory, width, count)
    if spec.rescore_precision or (layout.binary and spec.binary_centre == "documents"):
        size = max(size, min(count, TRAINING_SAMPLE))
    return size


def backend_bytes(folder: Path, description: dict[str, Any] | None) -> int | None:
    """Bytes of the dense part a backend ``description`` says ``folder`` holds (None when
    there is none, or it lives on a server)."""
    from retriever.core.sizes import folder_bytes

    if not description:
        return None
    if description.get("backend") == "milvus":
        path = folder / MILVUS_LITE_FILE
        return folder_bytes(path) if description["uri"] == MILVUS_LITE_FILE else None
    kept = [INDEX_FILE, BINARY_CENTRE_FILE, *RESCORE_FILES]
    return sum(folder_bytes(folder / name) for name in kept if (folder / name).exists())
