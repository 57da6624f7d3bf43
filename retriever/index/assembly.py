"""Assemble the parts of one index generation from streamed chunks of raw embeddings.

    embeddings -> filter -> dense backend (FAISS or Milvus), key-token index, BM25, docstore
               -> manifest

An :class:`~retriever.core.spec.IndexSpec` says which parts an index holds and how they
are built; a :class:`PartsWriter` writes them into a staging folder of
:mod:`retriever.core.generations`, from nothing (a build) or onto a copy of the current
generation (add, delete); the manifest records the spec, what was built, from what, and
how long it took.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.generations import mark_readable
from retriever.core.sizes import folder_bytes
from retriever.core.spec import IndexSpec
from retriever.data.datasets import Document
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.encode.lens import TokenLens
from retriever.index.integrity import file_records
from retriever.index.manifest import Manifest, library_versions, write_manifest
from retriever.parts.bm25 import BM25_DIR, STEMMER_LANGUAGE, STOPWORDS, BM25Builder
from retriever.parts.dense.backends import (
    DenseBackend,
    backend_bytes,
    new_backend,
    writable_copy,
)
from retriever.parts.dense.faiss_index import METRIC
from retriever.parts.dense.gpu import GpuSetting, gpu_count
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
        spec: IndexSpec,
        embed_filter: EmbedFilter,
        lens: TokenLens | None,
        *,
        base: Manifest | None = None,
        use_gpu: GpuSetting = None,
    ) -> None:
        """``base``: the manifest of the generation this one changes, None for a build."""
        self.staging = staging
        self.spec = spec
        self.filter = embed_filter
        self.lens = lens
        self.base = base.folder if base is not None else None
        self.timings: dict[str, float] = {}
        self.dense: DenseBackend | None = None
        self.backend_description: dict[str, Any] | None = None  # the manifest's, once saved
        if spec.dense is not None:
            if base is not None:
                self.dense = writable_copy(
                    self.base, staging, spec.dense, base.backend, base.dim, use_gpu=use_gpu
                )
            else:
                self.dense = new_backend(spec.dense, embed_filter.dim, staging, use_gpu=use_gpu)
        # Made on the first added chunk (a delete adds none and has no lens).
        self.sparse_builder: KeyTokenIndexBuilder | None = None
        if self.base is not None:
            copy_docstore(self.base / DOCSTORE_DIR, staging / DOCSTORE_DIR)
        self.docstore = DocStoreWriter(staging / DOCSTORE_DIR)
        self.bm25_builder = BM25Builder() if spec.bm25 and base is None else None
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
        if self.spec.sparse is not None:
            if self.sparse_builder is None:
                self.sparse_builder = KeyTokenIndexBuilder(
                    self.lens, self.spec.sparse, self.staging / _SCRATCH
                )
            space = self.spec.sparse.space
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
            self.dense.set_search_params(self.spec.dense.search.faiss())
            counts["dense"] = self.dense.count
            self.backend_description = self.dense.save(self.staging)
        if self.spec.sparse is not None:
            counts["sparse"] = self._finish_sparse(removed_keys)
        if self.spec.bm25:
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
        spec = self.spec.sparse
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


def token_lens(encoder: Encoder, spec: IndexSpec, embed_filter: EmbedFilter) -> TokenLens | None:
    """The lens the key-token part is built with (``None`` when the spec has none)."""
    if spec.sparse is None:
        return None
    return TokenLens(encoder.unembedding(), embed_filter, encoder.tokenizer)


def index_manifest(
    spec: IndexSpec,
    model: dict[str, Any],
    embed_filter: EmbedFilter,
    writer: PartsWriter,
    counts: dict[str, int],
    documents: dict[str, Any],
    *,
    timings: dict[str, float],
    store: dict[str, Any] | None,
) -> Manifest:
    """The manifest of the generation ``writer`` wrote: ``spec`` as written, and what was
    found (``model``: ``Encoder.describe()``). ``documents``: ``next_key``,
    ``content_sha256`` and ``history`` (entries without a time get this one's); ``store``:
    the store's entry (:func:`store_entry`)."""
    count = counts["docstore"]
    mismatched = {part: n for part, n in counts.items() if n != count}
    if mismatched:
        raise RetrieverError(f"index parts disagree on the document count: {counts}")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    history = [{**entry, "at": entry.get("at", stamp)} for entry in documents["history"]]
    return Manifest(
        spec=spec,
        model=model,
        filter=embed_filter.describe(),
        documents={**documents, "count": count, "history": history},
        dense={
            "metric": METRIC,
            "normalized": True,
            "dim": embed_filter.dim,
            "count": count,
            "backend": writer.backend_description,
        }
        if spec.dense
        else None,
        sparse={"count": count} if spec.sparse else None,
        bm25={"stemmer": STEMMER_LANGUAGE, "stopwords": STOPWORDS, "count": count}
        if spec.bm25
        else None,
        store=store,
        versions=library_versions(),
        build={
            "created": stamp,
            "generation": writer.staging.name.removesuffix(".partial"),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "bytes": _part_bytes(writer.staging, writer.backend_description),
            "faiss_gpus": gpu_count(),
        },
    )


def store_entry(store: EmbeddingStore) -> dict[str, Any]:
    """The manifest's note of the store an index was assembled from; its size is what
    removing it (`retriever stores remove`) would free."""
    return {
        "folder": str(store.folder),
        "key_sha256": store.digest,
        "bytes": folder_bytes(store.folder),
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
    dense = backend_bytes(staging, backend)
    if dense is not None:
        sizes["dense"] = dense
    sizes["total"] = folder_bytes(staging)
    return sizes


def publish_manifest(staging: Path, manifest: Manifest) -> None:
    """Write the generation's manifest, its last file, once every part is readable; it
    records each file's size and checksum."""
    mark_readable(staging)
    manifest.files = file_records(staging)
    write_manifest(staging, manifest)
