"""The encode stage: documents -> encoder -> embedding store (:mod:`retriever.store.embeddings`).

Every pooling of every chunk is encoded once and kept as a shard, so a crashed run
resumes from its last complete chunk and every later index, benchmark variant or
baseline reads the shards instead of running the LLM again. The chunks are encoded in
this process, or on a Ray actor pool (:mod:`retriever.store.on_ray`): the shards are
the same either way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.generations import disk_errors, refuse_inside_index
from retriever.core.progress import progress_bar
from retriever.data.datasets import CorpusScan, Document, iter_documents
from retriever.store.embeddings import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_STORE_PRECISION,
    EmbeddingStore,
    chunked_documents,
    encoding_key,
    find_cached_store,
    held_key,
    key_precision,
)
from retriever.store.on_ray import RayOptions, encode_with_ray
from retriever.store.pacing import (
    PROBE_BATCHES,
    DiskNeed,
    RateMeter,
    announce,
    check_disk,
    chunk_size_for,
    probe_rate,
)

logger = logging.getLogger(__name__)


def check_store_options(folder: str | Path | None, chunk_size: int | None, what: str) -> None:
    """A store's folder (``what`` names it in the error) and chunk size, checked before
    any model loads."""
    if chunk_size is not None and chunk_size < 1:
        raise RetrieverError(f"--chunk-size must be at least 1, got {chunk_size}")
    if folder is not None:
        refuse_inside_index(folder, what)


def encode_corpus(
    encoder: Any,
    scan: CorpusScan,
    *,
    folder: str | Path | None = None,
    chunk_size: int | None = None,
    poolings: Sequence[str] | None = None,
    precision: str = DEFAULT_STORE_PRECISION,
    slice_: tuple[int, int] = (0, 1),
    restart: bool = False,
    show_progress: bool = True,
    ray: RayOptions | None = None,
    index_need: DiskNeed | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EmbeddingStore:
    """Scan -> encode -> store for a corpus file (resumable; see :func:`encode_to_store`).

    The store is ``folder``, or the cache's store for this encoding (one holding
    ``poolings``, default the encoder's own, at ``precision``). A new store's chunks take
    about two minutes each at the rate a short probe measures (:mod:`retriever.store.pacing`),
    unless ``chunk_size`` fixes them; an existing store keeps its own. Before encoding, the
    disk must hold the store and ``index_need`` (what the caller will write next), or this
    refuses. With ``ray`` the chunks are encoded by a Ray actor pool instead of this process
    (a new store's chunks are then :data:`DEFAULT_CHUNK_SIZE` unless ``chunk_size`` is set).
    """
    check_store_options(folder, chunk_size, "the embedding store")
    poolings = tuple(poolings or (encoder.config.pooling,))
    key = encoding_key(
        encoder,
        scan.sha256,
        scan.count,
        kind="documents",
        chunk_size=chunk_size,
        poolings=poolings,
        precision=precision,
    )
    target = Path(folder).expanduser().resolve() if folder else find_cached_store(key)
    held = None if restart else held_key(target)
    existing = EmbeddingStore(target, held) if held is not None else None
    disk = check_disk(_disk_needs(encoder, scan, existing or key, target, slice_, index_need))
    meter = RateMeter(clock)
    if existing is None and chunk_size is None:
        if ray is None:
            probe = PROBE_BATCHES * int(getattr(encoder, "batch_size", 16))
            texts = [d.embedding_text for d in islice(iter_documents(scan), probe)]
            meter = probe_rate(encoder, texts, key["poolings"], clock=clock)
        chosen = chunk_size_for(meter.rate) if meter.known else DEFAULT_CHUNK_SIZE
        key = {**key, "chunk_size": chosen}
    store = EmbeddingStore.open_or_create(
        target, key, restart=restart, fixed_chunk_size=chunk_size is not None
    )
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
        encoder,
        store,
        iter_documents(scan),
        slice_=slice_,
        show_progress=show_progress,
        meter=meter,
        on_rate=lambda documents, rate: announce(documents, rate, disk, store.chunk_size),
    )


def _disk_needs(
    encoder: Any,
    scan: CorpusScan,
    store: EmbeddingStore | dict[str, Any],
    folder: Path,
    slice_: tuple[int, int],
    index_need: DiskNeed | None,
) -> list[DiskNeed]:
    """What this run will write: the missing part of this slice's store, and the index."""
    key = store.key if isinstance(store, EmbeddingStore) else store
    index, total = slice_
    if isinstance(store, EmbeddingStore):
        mine = [c for c in range(store.num_chunks) if c % total == index]
        missing = sum(store.expected_count(c) for c in mine if store.shard(c) is None)
    else:
        missing = -(-scan.count // total)
    width = int(getattr(encoder, "hidden_size", 0) or 0)
    vector_bytes = width * len(key["poolings"]) * np.dtype(key_precision(key)).itemsize
    text_bytes = scan.document_bytes / max(scan.count, 1)
    needs = [DiskNeed("store", folder, int(missing * (vector_bytes + text_bytes)))]
    return needs + ([index_need] if index_need is not None else [])


def encode_to_store(
    encoder: Any,
    store: EmbeddingStore,
    documents: Iterable[Document],
    *,
    queries: bool = False,
    slice_: tuple[int, int] = (0, 1),
    show_progress: bool = True,
    meter: RateMeter | None = None,
    on_rate: Callable[[int, float], object] | None = None,
) -> EmbeddingStore:
    """Encode, in this process, every chunk of this slice that the store lacks.

    Chunks already complete are skipped, so a rerun after a crash loses at most the chunk
    that was being encoded. ``on_rate(documents to encode, docs/s)`` is called once, as
    soon as ``meter`` knows the rate (at once when a probe measured it).
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
    size = sum(store.expected_count(c) for c in mine)
    pace = _Pace(meter or RateMeter(), on_rate, size - done)
    label = f"{index}/{total}"
    with progress_bar(
        total=size, initial=done, desc="encoding", unit="doc", show=show_progress
    ) as bar:
        pace.tell()
        for chunk, batch in chunked_documents(documents, store.chunk_size):
            if chunk not in todo:
                continue
            pace.meter.start()
            vectors = encoder.encode_poolings(
                [d.embedding_text for d in batch],
                store.poolings,
                queries=queries,
                show_progress=False,
                # the bar moves per batch, not per chunk of thousands
                on_batch=lambda n: (bar.update(n), pace.update(n)),
            )
            with disk_errors(store.folder):
                store.write_shard(chunk, batch, vectors, slice_label=label)
            todo.discard(chunk)
            if not todo:
                break
    return store


class _Pace:
    """Feeds a rate meter and tells ``on_rate`` once, when the rate is known."""

    def __init__(
        self, meter: RateMeter, on_rate: Callable[[int, float], object] | None, documents: int
    ) -> None:
        self.meter, self.on_rate, self.documents = meter, on_rate, documents

    def update(self, documents: int) -> None:
        self.meter.update(documents)
        self.tell()

    def tell(self) -> None:
        if self.on_rate is not None and self.meter.known:
            self.on_rate(self.documents, self.meter.rate)
            self.on_rate = None


def cached_embeddings(
    encoder: Any,
    texts: list[str],
    poolings: Iterable[str],
    *,
    queries: bool,
    precision: str = DEFAULT_STORE_PRECISION,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """``{pooling: (n, d) float32}`` of a list of texts, through a store in the cache (one
    of ``precision``, holding ``poolings``).

    For collections held in memory (a benchmark's corpus and queries): the key's source
    is a hash of the texts themselves.
    """
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))  # unambiguous boundaries
        digest.update(encoded)
    kind = "queries" if queries else "documents"
    poolings = list(poolings)
    key = encoding_key(
        encoder,
        digest.hexdigest(),
        len(texts),
        kind=kind,
        chunk_size=DEFAULT_CHUNK_SIZE,
        poolings=poolings,
        precision=precision,
    )
    store = EmbeddingStore.open_or_create(find_cached_store(key), key, fixed_chunk_size=False)
    store.drop_damaged(range(store.num_chunks), getattr(encoder, "hidden_size", None))
    if store.missing_chunks():
        documents = (Document(str(i), "", text) for i, text in enumerate(texts))
        encode_to_store(encoder, store, documents, queries=queries, show_progress=show_progress)
    else:
        logger.info("embedding store hit for %d %s", len(texts), kind)
    return {pooling: store.read(pooling) for pooling in poolings}
