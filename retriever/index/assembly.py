"""Assemble the parts of one index generation from streamed chunks of raw embeddings.

    embeddings -> filter -> dense backend (FAISS or Milvus), key-token index, BM25, docstore
               -> manifest

An :class:`IndexPlan` says which parts an index holds and how they are built; a
:class:`PartsWriter` writes them into a staging folder of :mod:`retriever.core.generations`,
from nothing (a build) or onto a copy of the current generation (add, delete); the
manifest records what was built, from what, and how long it took.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.config import MANIFEST_VERSION, PROMPTS, FilterSpec, SparseSpec
from retriever.core.errors import RetrieverError
from retriever.core.generations import mark_readable
from retriever.core.sizes import folder_bytes
from retriever.data.datasets import Document
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.encode.lens import TokenLens
from retriever.index.manifest import MANIFEST_FILE, MANIFEST_FORMAT, library_versions
from retriever.parts.bm25 import BM25_DIR, STEMMER_LANGUAGE, STOPWORDS, BM25Builder
from retriever.parts.dense.backends import (
    DEFAULT_COLLECTION,
    MILVUS_LITE_FILE,
    BackendSpec,
    DenseBackend,
    backend_bytes,
    new_backend,
    writable_copy,
)
from retriever.parts.dense.codes import STORAGES, names_own_codes
from retriever.parts.dense.faiss_index import METRIC
from retriever.parts.dense.gpu import gpu_count
from retriever.parts.docstore import (
    DOCSTORE_DIR,
    DocStore,
    DocStoreWriter,
    combine_digests,
    content_digest,
    copy_docstore,
)
from retriever.parts.sparse import SPARSE_DIR, KeyTokenIndex, KeyTokenIndexBuilder
from retriever.store.embeddings import DEFAULT_CHUNK_SIZE, EmbeddingStore, Shard

logger = logging.getLogger(__name__)

_SCRATCH = ".scratch"


@dataclass(frozen=True)
class SearchParams:
    """Search-time settings of approximate indexes, stored as the index's defaults."""

    nprobe: int | None = None
    ef_search: int | None = None
    rescore: int | None = None  # M: the first stage fetches M x k candidates

    def faiss(self) -> dict[str, int | None]:
        return {"nprobe": self.nprobe, "efSearch": self.ef_search, "rescore": self.rescore}

    def __post_init__(self) -> None:
        for name, value in (
            ("--nprobe", self.nprobe),
            ("--ef-search", self.ef_search),
            ("--rescore", self.rescore),
        ):
            if value is not None and value < 1:
                raise RetrieverError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class IndexPlan:
    """Which parts an index holds and how they are built (everything after encoding)."""

    filter_spec: FilterSpec = dataclasses.field(default_factory=FilterSpec)
    index_type: str = "Flat"
    dense: bool = True
    sparse: SparseSpec | None = None
    bm25: bool = False
    search_params: SearchParams = dataclasses.field(default_factory=SearchParams)
    use_gpu: bool | None = None
    backend: str = "faiss"
    milvus_uri: str | None = None
    collection: str = DEFAULT_COLLECTION
    # How the dense index stores its vectors (retriever.parts.dense.codes);
    # search_params.rescore > 0 also keeps the int8 rescore vectors.
    storage: str | None = None
    binary_centre: str = "documents"
    ef_construction: int | None = None
    rescore_vectors: str = "int8"

    def __post_init__(self) -> None:
        if not (self.dense or self.sparse or self.bm25):
            raise RetrieverError("--no-dense leaves nothing to search: add --sparse and/or --bm25")
        self.backend_spec()  # validates the backend's settings

    def backend_spec(self) -> BackendSpec:
        return BackendSpec(
            kind=self.backend,
            index_type=self.index_type,
            milvus_uri=self.milvus_uri,
            collection=self.collection,
            use_gpu=self.use_gpu,
            storage=self.storage,
            rescore=self.rescore_vectors if self.search_params.rescore else None,
            binary_centre=self.binary_centre,
            ef_construction=self.ef_construction,
        )


def plan_of(manifest: dict[str, Any], *, use_gpu: bool | None = None) -> IndexPlan:
    """The plan an existing index was built with, read from its manifest."""
    index = manifest.get("index") or {}
    params = index.get("search_params") or {}
    described = index.get("backend") or {}
    return IndexPlan(
        filter_spec=FilterSpec.from_dict(manifest["filter"].get("spec", {})),
        index_type=index.get("type", "Flat"),
        dense=bool(manifest.get("index")),
        sparse=SparseSpec.from_dict(manifest["sparse"]) if manifest.get("sparse") else None,
        bm25=bool(manifest.get("bm25")),
        search_params=SearchParams(
            params.get("nprobe"), params.get("efSearch"), params.get("rescore")
        ),
        use_gpu=use_gpu,
        backend=described.get("backend", "faiss"),
        milvus_uri=_server_uri(index),
        collection=_collection_name(index),
        storage=_storage(index, described),
        binary_centre=described.get("binary_centre", "documents"),
        rescore_vectors=described.get("rescore") or "int8",
    )


def _storage(index: dict[str, Any], described: dict[str, Any]) -> str | None:
    """The storage to plan with: the recorded one, unless the index type names its own
    codes (the recorded one then says what those are)."""
    storage = described.get("storage")
    if storage not in STORAGES:
        return None
    if described.get("backend", "faiss") == "faiss" and names_own_codes(index.get("type", "Flat")):
        return None
    return storage


def _collection_name(index: dict[str, Any]) -> str:
    """The name a user gave (a server generation's own collection is ``NAME__<gen>``)."""
    described = index.get("backend") or {}
    return described.get("alias") or described.get("collection", DEFAULT_COLLECTION)


def _server_uri(index: dict[str, Any]) -> str | None:
    uri = (index.get("backend") or {}).get("uri")
    return None if uri in (None, MILVUS_LITE_FILE) else uri


def shard_batches(
    shards: Iterable[Shard], pooling: str, first_key: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[Document]]]:
    """``(keys, raw embeddings, documents)`` per shard; keys continue from ``first_key``."""
    key = first_key
    for shard in shards:
        embeddings = np.asarray(shard.embeddings(pooling), dtype=np.float32)
        documents = list(shard.documents())
        yield np.arange(key, key + len(documents), dtype=np.int64), embeddings, documents
        key += len(documents)


def training_sample(
    shards: Sequence[Shard], pooling: str, embed_filter: EmbedFilter, size: int, seed: int = 0
) -> np.ndarray:
    """``size`` filtered vectors drawn uniformly from the shards (memory: the sample)."""
    total = sum(s.count for s in shards)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    parts, offset = [], 0
    for shard in shards:
        inside = chosen[(chosen >= offset) & (chosen < offset + shard.count)] - offset
        if len(inside):
            parts.append(embed_filter.transform(np.asarray(shard.embeddings(pooling))[inside]))
        offset += shard.count
    return np.concatenate(parts)


class PartsWriter:
    """Writes the parts of one generation from streamed chunks, onto a base generation
    (add, delete) or from nothing (build)."""

    def __init__(
        self,
        staging: Path,
        plan: IndexPlan,
        embed_filter: EmbedFilter,
        lens: TokenLens | None,
        base: Path | None,
        base_index: dict[str, Any] | None = None,
    ) -> None:
        self.staging = staging
        self.plan = plan
        self.filter = embed_filter
        self.lens = lens
        self.base = base
        self.timings: dict[str, float] = {}
        self.dense: DenseBackend | None = None
        self.backend_description: dict[str, Any] | None = None  # the manifest's, once saved
        if plan.dense:
            if base is not None:
                self.dense = writable_copy(base, staging, base_index, use_gpu=plan.use_gpu)
            else:
                self.dense = new_backend(plan.backend_spec(), embed_filter.dim, staging)
        # Made on the first added chunk (a delete adds none and has no lens).
        self.sparse_builder: KeyTokenIndexBuilder | None = None
        if base is not None:
            copy_docstore(base / DOCSTORE_DIR, staging / DOCSTORE_DIR)
        self.docstore = DocStoreWriter(staging / DOCSTORE_DIR)
        self.bm25_builder = BM25Builder() if plan.bm25 and base is None else None
        self.added = 0
        self.added_digest = 0
        self.removed: list[tuple[int, Document]] = []

    def _timed(self, part: str, step: Any) -> Any:
        mark = time.perf_counter()
        result = step()
        self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - mark
        return result

    def train(self, sample: np.ndarray) -> None:
        self._timed("train", lambda: self.dense.train(sample))

    def add(self, keys: np.ndarray, embeddings: np.ndarray, documents: list[Document]) -> None:
        if self.dense is not None:
            vectors = self._timed("filter", lambda: self.filter.transform(embeddings))
            self._timed("index", lambda: self.dense.add(keys, vectors))
        if self.plan.sparse is not None:
            if self.sparse_builder is None:
                self.sparse_builder = KeyTokenIndexBuilder(
                    self.lens, self.plan.sparse, self.staging / _SCRATCH
                )
            space = self.plan.sparse.space
            self._timed(
                "sparse",
                lambda: self.sparse_builder.add(keys, self.lens.vectors(embeddings, space)),
            )
        if self.bm25_builder is not None:
            texts = [d.embedding_text for d in documents]
            self._timed("bm25", lambda: self.bm25_builder.add(keys, texts))
        self._timed("docstore", lambda: self.docstore.put(keys, documents))
        self.added += len(documents)
        self.added_digest = combine_digests(self.added_digest, content_digest(documents))

    def delete(self, doc_ids: Iterable[str]) -> list[tuple[int, Document]]:
        removed = self.docstore.delete(doc_ids)
        self.removed += removed
        return removed

    def finish(self) -> dict[str, int]:
        """Write every part; returns each part's document count."""
        self.docstore.__exit__(None, None, None)
        removed_keys = np.array([key for key, _ in self.removed], dtype=np.int64)
        docstore = DocStore.open(self.staging / DOCSTORE_DIR)
        counts = {"docstore": len(docstore)}
        logger.info(
            "docstore: %d documents, %s", counts["docstore"], _size(self.staging / DOCSTORE_DIR)
        )
        if self.dense is not None:
            self._timed("index", lambda: self.dense.remove(removed_keys))
            self.dense.set_search_params(self.plan.search_params.faiss())
            counts["index"] = self.dense.count
            self.backend_description = self.dense.save(self.staging)
        if self.plan.sparse is not None:
            counts["sparse"] = self._finish_sparse(removed_keys)
        if self.plan.bm25:
            counts["bm25"] = self._finish_bm25(docstore)
        docstore.close()
        shutil.rmtree(self.staging / _SCRATCH, ignore_errors=True)
        return counts

    def _finish_sparse(self, removed_keys: np.ndarray) -> int:
        sparse = self.sparse_builder and self._timed("sparse", self.sparse_builder.finish)
        if self.base is not None:
            base_sparse = KeyTokenIndex.load(self.base / SPARSE_DIR)
            sparse = base_sparse.with_added(sparse) if sparse else base_sparse
        sparse = sparse.without_keys(removed_keys)
        sparse.save(self.staging / SPARSE_DIR)
        spec = self.plan.sparse
        logger.info(
            "key-token sparse index: %d documents, top %d tokens each from the %s space, %s",
            sparse.num_documents,
            spec.doc_tokens,
            spec.space,
            _size(self.staging / SPARSE_DIR),
        )
        return sparse.num_documents

    def _finish_bm25(self, docstore: DocStore) -> int:
        builder = self.bm25_builder
        if builder is None:
            # BM25's statistics cover the whole collection: rebuild it from the docstore.
            builder = BM25Builder()
            for batch in batched(docstore.items(), DEFAULT_CHUNK_SIZE):
                keys = np.array([key for key, _ in batch], dtype=np.int64)
                self._timed(
                    "bm25",
                    lambda b=batch, k=keys: builder.add(k, [d.embedding_text for _, d in b]),
                )
        bm25 = self._timed("bm25", builder.finish)
        bm25.save(self.staging / BM25_DIR)
        logger.info(
            "BM25 index: %d documents, %s", bm25.num_documents, _size(self.staging / BM25_DIR)
        )
        return bm25.num_documents


def _size(path: Path) -> str:
    return f"{folder_bytes(path) / 2**20:.1f} MiB"


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def token_lens(encoder: Encoder, plan: IndexPlan, embed_filter: EmbedFilter) -> TokenLens | None:
    """The lens the key-token part is built with (``None`` when the plan has none)."""
    if plan.sparse is None:
        return None
    return TokenLens(encoder.unembedding(), embed_filter, encoder.tokenizer)


def index_manifest(
    encoder: Encoder,
    plan: IndexPlan,
    embed_filter: EmbedFilter,
    writer: PartsWriter,
    counts: dict[str, int],
    *,
    next_key: int,
    digest: int,
    history: list[dict[str, Any]],
    timings: dict[str, float],
    staging: Path,
    store: EmbeddingStore | None,
) -> dict[str, Any]:
    """The manifest of the generation ``writer`` wrote into ``staging``."""
    count = counts["docstore"]
    mismatched = {part: n for part, n in counts.items() if n != count}
    if mismatched:
        raise RetrieverError(f"index parts disagree on the document count: {counts}")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "model": encoder.describe(),
        "encoder": {**encoder.config.to_dict(), "prompt_template": PROMPTS[encoder.config.prompt]},
        "filter": embed_filter.describe(),
        "index": _dense_entry(plan, embed_filter, writer, count) if plan.dense else None,
        "sparse": {**plan.sparse.to_dict(), "count": count} if plan.sparse else None,
        "bm25": {"stemmer": STEMMER_LANGUAGE, "stopwords": STOPWORDS, "count": count}
        if plan.bm25
        else None,
        "documents": {
            "count": count,
            "next_key": next_key,
            "content_sha256": f"{digest:064x}",
            "history": [{**entry, "at": entry.get("at", stamp)} for entry in history],
        },
        # The store's size: what removing it (`retriever stores remove`) would free.
        "store": {
            "folder": str(store.folder),
            "key_sha256": store.digest,
            "bytes": folder_bytes(store.folder),
        }
        if store is not None
        else None,
        "versions": library_versions(),
        "build": {
            "created": stamp,
            "generation": staging.name.removesuffix(".partial"),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "bytes": _part_bytes(staging, writer.backend_description),
            "faiss_gpus": gpu_count(),
        },
    }


def _dense_entry(
    plan: IndexPlan, embed_filter: EmbedFilter, writer: PartsWriter, count: int
) -> dict[str, Any]:
    return {
        "type": plan.index_type,
        "metric": METRIC,
        "normalized": True,
        "dim": embed_filter.dim,
        "count": count,
        "search_params": {k: v for k, v in plan.search_params.faiss().items() if v is not None},
        "backend": writer.backend_description,
    }


def _part_bytes(staging: Path, backend: dict[str, Any] | None) -> dict[str, int]:
    sizes = {
        part: folder_bytes(staging / name)
        for part, name in (
            ("sparse", SPARSE_DIR),
            ("bm25", BM25_DIR),
            ("docstore", DOCSTORE_DIR),
            ("filter", "filter.npy"),
        )
        if (staging / name).exists()
    }
    dense = backend_bytes(staging, {"backend": backend}) if backend else None
    if dense is not None:
        sizes["index"] = dense
    sizes["total"] = folder_bytes(staging)
    return sizes


def write_manifest(staging: Path, manifest: dict[str, Any]) -> None:
    mark_readable(staging)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
