"""The encode stage: documents -> encoder -> embedding store (:mod:`retriever.store`).

Every pooling of every chunk is encoded once and kept as a shard, so a crashed run
resumes from its last complete chunk and every later index, benchmark variant or
baseline reads the shards instead of running the LLM again. The chunks are encoded in
this process, or on a Ray actor pool (:mod:`retriever.distributed`): the shards are
the same either way.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from retriever.config import POOLINGS
from retriever.datasets import CorpusScan, Document, iter_documents
from retriever.distributed import RayOptions, encode_with_ray
from retriever.errors import RetrieverError
from retriever.generations import disk_errors
from retriever.progress import progress_bar
from retriever.store import (
    DEFAULT_CHUNK_SIZE,
    EmbeddingStore,
    cached_store_folder,
    chunked_documents,
    encoding_key,
    store_for_corpus,
)

logger = logging.getLogger(__name__)


def encode_corpus(
    encoder: Any,
    scan: CorpusScan,
    *,
    folder: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    slice_: tuple[int, int] = (0, 1),
    restart: bool = False,
    show_progress: bool = True,
    ray: RayOptions | None = None,
) -> EmbeddingStore:
    """Scan -> encode -> store for a corpus file (resumable; see :func:`encode_to_store`).

    The store is ``folder``, or a folder in the cache named by the encoding key. With
    ``ray`` the chunks are encoded by a Ray actor pool instead of this process.
    """
    if chunk_size < 1:
        raise RetrieverError(f"--chunk-size must be at least 1, got {chunk_size}")
    store = store_for_corpus(encoder, scan, folder=folder, chunk_size=chunk_size, restart=restart)
    store.describe_source(scan)
    # A damaged shard of this slice (a truncated file, a wrong shape) is encoded again.
    index, total = slice_
    mine = (c for c in range(store.num_chunks) if c % total == index)
    store.drop_damaged(mine, getattr(encoder, "hidden_size", None))
    if ray is not None:
        return encode_with_ray(
            encoder, scan, store, ray, slice_=slice_, show_progress=show_progress
        )
    return encode_to_store(
        encoder, store, iter_documents(scan), slice_=slice_, show_progress=show_progress
    )


def encode_to_store(
    encoder: Any,
    store: EmbeddingStore,
    documents: Iterable[Document],
    *,
    queries: bool = False,
    slice_: tuple[int, int] = (0, 1),
    show_progress: bool = True,
) -> EmbeddingStore:
    """Encode, in this process, every chunk of this slice that the store lacks.

    Chunks already complete are skipped, so a rerun after a crash loses at most the chunk
    that was being encoded.
    """
    index, total = slice_
    mine = [c for c in range(store.num_chunks) if c % total == index]
    todo = {c for c in mine if store.shard(c) is None}
    done = store.done_count(c for c in mine if c not in todo)
    if done:
        logger.info(
            "resuming: %d of %d chunks of this slice already encoded in %s",
            len(mine) - len(todo),
            len(mine),
            store.folder,
        )
    if not todo:
        return store
    size = sum(min(store.chunk_size, store.count - c * store.chunk_size) for c in mine)
    label = f"{index}/{total}"
    with progress_bar(
        total=size, initial=done, desc="encoding", unit="doc", show=show_progress
    ) as bar:
        for chunk, batch in chunked_documents(documents, store.chunk_size):
            if chunk not in todo:
                continue
            vectors = encoder.encode_poolings(
                [d.embedding_text for d in batch],
                POOLINGS,
                queries=queries,
                show_progress=False,
                on_batch=bar.update,  # the bar moves per batch, not per chunk of thousands
            )
            with disk_errors(store.folder):
                store.write_shard(chunk, batch, vectors, slice_label=label)
            todo.discard(chunk)
            if not todo:
                break
    return store


def cached_embeddings(
    encoder: Any,
    texts: list[str],
    poolings: Iterable[str],
    *,
    queries: bool,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """``{pooling: (n, d) float32}`` of a list of texts, through a store in the cache.

    For collections held in memory (a benchmark's corpus and queries): the key's source
    is a hash of the texts themselves.
    """
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))  # unambiguous boundaries
        digest.update(encoded)
    kind = "queries" if queries else "documents"
    key = encoding_key(
        encoder, digest.hexdigest(), len(texts), kind=kind, chunk_size=DEFAULT_CHUNK_SIZE
    )
    store = EmbeddingStore.open_or_create(cached_store_folder(key), key)
    store.drop_damaged(range(store.num_chunks), getattr(encoder, "hidden_size", None))
    if store.missing_chunks():
        documents = (Document(str(i), "", text) for i, text in enumerate(texts))
        encode_to_store(encoder, store, documents, queries=queries, show_progress=show_progress)
    else:
        logger.info("embedding store hit for %d %s", len(texts), kind)
    return {pooling: store.read(pooling) for pooling in poolings}
