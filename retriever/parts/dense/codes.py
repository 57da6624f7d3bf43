"""How the dense index stores each filtered vector: its codes, and the rescore file.

Storage is a build choice, orthogonal to the index structure:

- ``float32``: the vector itself (4 bytes per dimension);
- ``float16``: FAISS's fp16 scalar quantizer (2 bytes per dimension);
- ``int8``: FAISS's 8-bit scalar quantizer (1 byte per dimension), each dimension's range
  the min and max over a training sample of the documents;
- ``binary``: one bit per dimension, ``x > centre``, searched by Hamming distance in
  FAISS's binary indexes. The centre is the mean of the training sample (``documents``) or
  zero (``zero``: the sign of each coordinate, which needs no data; the default filter
  already removes the model's mean unembedding direction, the largest shared component).
- ``rabitq``: FAISS's RaBitQ (Gao and Long, 2024; multi-bit, 2025): each vector's offset
  from a centre in ``bits`` per dimension plus two floats, the inner product with the
  float query estimated without bias from them. The centre is the training sample's mean
  (Flat, HNSW) or each IVF list's centroid (IVF). No random rotation is applied: FAISS
  leaves it to the caller, and the rotation's d x d floats would cost more per document
  than the codes on a collection of SciFact's size (a factory string such as
  ``RR,IVF64,RaBitQ`` as the index type adds one, as its own codes). FAISS's HNSW over
  RaBitQ codes takes only the L2 metric: on unit vectors ``|q - x|^2 = 2 - 2 q.x`` ranks
  alike, and scores are mapped back to inner products. IVF keeps the codes in FAISS's
  FastScan layout (``IVFn,RaBitQfsB``: 32 codes per block, scored with SIMD lookup
  tables), which found as much as the plain layout at 10^6 vectors, two to four times
  faster (benchmarks/results/rabitq-fastscan).

The structure (``Flat``, ``HNSWm``, ``IVFn``) and the storage compose into one FAISS
factory string (:func:`layout_of`). An index type that names its own codes (``IVF1024,PQ64``,
``HNSW32,SQ8``) keeps them, and the storage recorded is what its file holds
(:func:`codes_of`).

:class:`RescoreVectors` is the second stage of ``--rescore M``: the first stage fetches
``M x k`` candidates from the compact codes, and these int8 vectors, memory-mapped from the
generation folder so that RAM holds only the codes, re-score them against the float query.

Every sample is at most ``TRAINING_SAMPLE`` documents drawn uniformly (seed 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.core.config import BINARY_CENTRES, DEFAULT_RABITQ_BITS, DEFAULT_STORAGE, STORAGES
from retriever.core.errors import RetrieverError
from retriever.parts.dense.faiss_install import faiss

# STORAGES, DEFAULT_STORAGE (and why: config.DEFAULT_STORAGE_REASON) and BINARY_CENTRES
# are this module's too, kept in config so that the command line's help needs no FAISS.
__all__ = ["BINARY_CENTRES", "DEFAULT_STORAGE", "STORAGES", "layout_of", "codes_of"]
TRAINING_SAMPLE = 100_000

_CODES = {"float32": "Flat", "float16": "SQfp16", "int8": "SQ8"}
_STRUCTURE = re.compile(r"(?P<kind>Flat|HNSW|IVF)(?P<size>\d*)(?:,Flat)?")

BINARY_CENTRE_FILE = "binary_centre.npy"
RESCORE_CODES_FILE = "rescore_codes.npy"
RESCORE_KEYS_FILE = "rescore_keys.npy"
RESCORE_RANGE_FILE = "rescore_range.npy"
RESCORE_FILES = (RESCORE_CODES_FILE, RESCORE_KEYS_FILE, RESCORE_RANGE_FILE)


@dataclass(frozen=True)
class Layout:
    """An index type and a storage as one FAISS factory string."""

    factory: str
    storage: str  # one of STORAGES, or "factory" when the index type names its codes
    binary: bool

    @property
    def l2(self) -> bool:
        """Whether FAISS builds this index with the L2 metric (HNSW over RaBitQ codes)."""
        return l2_only(self.factory)


def l2_only(factory: str) -> bool:
    """Whether a factory string names an index FAISS builds only with the L2 metric."""
    return factory.startswith("HNSW") and ",RaBitQ" in factory


def layout_of(index_type: str, storage: str | None, bits: int | None = None) -> Layout:
    """The factory string of ``index_type`` (``Flat``, ``HNSWm``, ``IVFn`` or any FAISS
    factory string) holding ``storage`` codes (None: the default, or the type's own);
    ``bits`` per dimension for RaBitQ codes (None: the default)."""
    if storage is not None and storage not in STORAGES:
        raise RetrieverError(f"unknown --storage {storage!r}; choose {', '.join(STORAGES)}")
    match = _STRUCTURE.fullmatch(index_type)
    if match is None or (match["kind"] == "IVF" and not match["size"]):
        if storage not in (None, "float32"):
            raise RetrieverError(
                f"--storage {storage} applies to --index-type Flat, HNSWm or IVFn; "
                f"{index_type!r} names its own codes"
            )
        return Layout(index_type, "factory", False)
    storage = storage or DEFAULT_STORAGE
    kind, size = match["kind"], match["size"] or ("32" if match["kind"] == "HNSW" else "")
    if storage == "float32":  # the type as given (manifests keep their old names)
        return Layout(f"IVF{size},Flat" if kind == "IVF" else index_type, storage, False)
    if storage == "binary":
        return Layout(f"B{kind}{size}", storage, True)
    codes = _CODES.get(storage) or f"RaBitQ{bits or DEFAULT_RABITQ_BITS}"
    if kind == "Flat":
        return Layout(codes, storage, False)
    if kind == "IVF" and storage == "rabitq":
        codes = codes.replace("RaBitQ", "RaBitQfs")
    return Layout(f"{kind}{size},{codes}", storage, False)


def names_own_codes(index_type: str) -> bool:
    """Whether a FAISS index type is more than ``Flat``, ``HNSWm`` or ``IVFn``: a factory
    string with its own codes (``IVF256,PQ16``, ``HNSW32,SQ8``), which no storage changes."""
    return layout_of(index_type, None).storage == "factory"


def codes_of(index: faiss.Index | faiss.IndexBinary) -> str:
    """The storage a FAISS index holds: one of STORAGES, or ``pq`` / ``other``."""
    if isinstance(index, faiss.IndexBinary):
        return "binary"
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        return "float32"
    if isinstance(index, (faiss.IndexScalarQuantizer, faiss.IndexIVFScalarQuantizer)):
        quantizer = index.sq.qtype
        return {
            faiss.ScalarQuantizer.QT_8bit: "int8",
            faiss.ScalarQuantizer.QT_fp16: "float16",
        }.get(quantizer, "other")
    if isinstance(index, (faiss.IndexPQ, faiss.IndexIVFPQ)):
        return "pq"
    if isinstance(index, _RABITQ_TYPES):
        return "rabitq"
    return "other"


_RABITQ_TYPES = (
    faiss.IndexRaBitQ,
    faiss.IndexIVFRaBitQ,
    faiss.IndexRaBitQFastScan,
    faiss.IndexIVFRaBitQFastScan,
)


def rabitq_bits_of(index: faiss.Index) -> int | None:
    """Bits per dimension of the RaBitQ codes an index holds (None: it holds none)."""
    if isinstance(index, faiss.IndexBinary):
        return None
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    return int(index.rabitq.nb_bits) if isinstance(index, _RABITQ_TYPES) else None


def binary_bits(dim: int) -> int:
    """Bits per binary code: the dimension rounded up to whole bytes (the padding bits are
    zero in every code, so they never add to a Hamming distance)."""
    return -(-dim // 8) * 8


class BinaryCodes:
    """Thresholds filtered vectors at a centre into packed bits, and maps Hamming distances
    back to similarities in [-1, 1] (the cosine of the two sign vectors)."""

    def __init__(self, centre: np.ndarray, centre_from: str) -> None:
        if centre_from not in BINARY_CENTRES:
            raise RetrieverError(
                f"unknown --binary-centre {centre_from!r}; choose {', '.join(BINARY_CENTRES)}"
            )
        self.centre = np.asarray(centre, dtype=np.float32)
        self.centre_from = centre_from
        self.dim = len(self.centre)

    @classmethod
    def fit(cls, sample: np.ndarray, centre_from: str) -> BinaryCodes:
        dim = sample.shape[1]
        centre = sample.mean(axis=0) if centre_from == "documents" else np.zeros(dim)
        return cls(centre, centre_from)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(vectors) > self.centre, axis=1)

    def similarity(self, hamming: np.ndarray) -> np.ndarray:
        return (1.0 - 2.0 * np.asarray(hamming, dtype=np.float32) / self.dim).astype(np.float32)

    def save(self, folder: Path) -> None:
        np.save(folder / BINARY_CENTRE_FILE, self.centre, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, centre_from: str, dim: int) -> BinaryCodes:
        centre = _read_array(folder / BINARY_CENTRE_FILE, "the binary centre")
        if centre.shape != (dim,):
            raise RetrieverError(
                f"{folder / BINARY_CENTRE_FILE} holds a centre of shape {centre.shape}, the "
                f"index has dimension {dim}: rebuild the index"
            )
        return cls(centre, centre_from)


class RescoreVectors:
    """Document vectors for re-scoring, by document key: int8 or float32.

    int8 quantizes each dimension uniformly over its range in a training sample (255 steps
    from its min to its max), as FAISS's SQ8 does; float32 keeps the vectors (its range is
    the identity), so that re-scoring is exact. Keys are kept sorted, so a candidate's
    row is a binary search away; documents added later carry larger keys. Searching reads
    the codes memory-mapped: only the candidates' rows are paged in.
    """

    def __init__(self, low: np.ndarray, step: np.ndarray, keys: np.ndarray, codes: np.ndarray):
        self.low = np.asarray(low, dtype=np.float32)
        self.step = np.asarray(step, dtype=np.float32)
        self.keys = keys
        self.codes = codes

    @classmethod
    def fit(cls, sample: np.ndarray, precision: str = "int8") -> RescoreVectors:
        dim = sample.shape[1]
        if precision == "float32":
            empty = np.empty((0, dim), np.float32)
            return cls(np.zeros(dim), np.ones(dim), np.empty(0, np.int64), empty)
        low, high = sample.min(axis=0), sample.max(axis=0)
        step = np.maximum(high - low, np.finfo(np.float32).tiny) / 255.0
        return cls(low, step, np.empty(0, np.int64), np.empty((0, dim), np.uint8))

    @property
    def precision(self) -> str:
        return "float32" if self.codes.dtype == np.float32 else "int8"

    @property
    def count(self) -> int:
        return len(self.keys)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        if self.precision == "float32":
            return np.asarray(vectors, dtype=np.float32)
        scaled = np.rint((np.asarray(vectors, dtype=np.float32) - self.low) / self.step)
        return np.clip(scaled, 0, 255).astype(np.uint8)

    def rerank(
        self, queries: np.ndarray, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of each query's candidate keys (-1 pads) by the int8 vectors'
        inner product with the float query: ``(scores, keys)``, each ``(n, k)``."""
        queries = np.asarray(queries, dtype=np.float32)
        if not self.count:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1)
        rows = np.searchsorted(self.keys, candidates).clip(0, self.count - 1)
        known = (candidates >= 0) & (self.keys[rows] == candidates)
        codes = np.asarray(self.codes[rows.ravel()], dtype=np.float32).reshape(*rows.shape, -1)
        scores = np.einsum("ncd,nd->nc", codes, queries * self.step) + (queries @ self.low)[:, None]
        scores = np.where(known, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(scores, order, axis=1)
        keys = np.where(np.isfinite(best), np.take_along_axis(candidates, order, axis=1), -1)
        return best, keys

    def changed(
        self, added: list[tuple[np.ndarray, np.ndarray]], removed: np.ndarray
    ) -> RescoreVectors:
        """These vectors without the ``removed`` keys, with ``added`` ``(keys, vectors)``."""
        keep = ~np.isin(self.keys, removed)
        keys = [self.keys[keep]] + [k for k, _ in added]
        codes = [np.asarray(self.codes[keep])] + [self.encode(v) for _, v in added]
        keys_all = np.concatenate(keys).astype(np.int64)
        codes_all = np.concatenate(codes) if codes else self.codes
        order = np.argsort(keys_all, kind="stable")
        return RescoreVectors(self.low, self.step, keys_all[order], codes_all[order])

    def save(self, folder: Path) -> None:
        np.save(folder / RESCORE_RANGE_FILE, np.stack([self.low, self.step]), allow_pickle=False)
        np.save(folder / RESCORE_KEYS_FILE, self.keys, allow_pickle=False)
        np.save(folder / RESCORE_CODES_FILE, self.codes, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, dim: int) -> RescoreVectors:
        scale = _read_array(folder / RESCORE_RANGE_FILE, "the rescore ranges")
        keys = _read_array(folder / RESCORE_KEYS_FILE, "the rescore keys")
        codes = _read_array(folder / RESCORE_CODES_FILE, "the rescore vectors", mmap=True)
        dtypes = (np.uint8, np.float32)
        if scale.shape != (2, dim) or codes.shape != (len(keys), dim) or codes.dtype not in dtypes:
            raise RetrieverError(
                f"the rescore files in {folder} do not fit an index of dimension {dim} "
                f"(ranges {scale.shape}, vectors {codes.shape} {codes.dtype}, {len(keys)} "
                "keys): rebuild the index"
            )
        return cls(scale[0], scale[1], keys, codes)


def rescore_bytes(folder: Path) -> int:
    """Bytes of the rescore vectors in a generation folder (memory-mapped, not in RAM)."""
    return sum((folder / name).stat().st_size for name in RESCORE_FILES if (folder / name).exists())


def _read_array(path: Path, what: str, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {what} ({path}): {exc}; rebuild the index") from None
