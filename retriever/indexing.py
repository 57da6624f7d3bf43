"""Build, grow and shrink index folders: the stages after encoding.

    scan corpus -> encode into the embedding store (retriever.store)
                -> filter -> assemble parts (FAISS, key-token, BM25, docstore) -> publish

Every stage streams: the corpus is read chunk by chunk, each chunk's raw embeddings are
stored as a shard, and the index is assembled shard by shard, so a build's memory is one
chunk plus the index it writes. Writers (build, add, delete) hold the index path's lock
and write a new generation that replaces the old one in one atomic swap
(retriever.generations): a crash leaves the previous index, and the store's shards let
the rerun resume where encoding stopped.
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

from retriever.backends import (
    DEFAULT_COLLECTION,
    MILVUS_LITE_FILE,
    BackendSpec,
    DenseBackend,
    new_backend,
    training_size,
    writable_copy,
)
from retriever.config import MANIFEST_VERSION, PROMPTS, EncoderConfig, FilterSpec, SparseSpec
from retriever.datasets import Document, iter_documents, scan_corpus
from retriever.docstore import (
    DOCSTORE_DIR,
    DocStore,
    DocStoreWriter,
    combine_digests,
    content_digest,
    copy_docstore,
)
from retriever.embedfilter import EmbedFilter
from retriever.encoder import Encoder
from retriever.errors import RetrieverError
from retriever.faiss_gpu import gpu_count
from retriever.generations import (
    check_destination,
    current_generation,
    mark_readable,
    new_generation,
    writer_lock,
)
from retriever.index import INDEX_FILE, METRIC, has_parameter
from retriever.lens import TokenLens
from retriever.lexical import BM25_DIR, STEMMER_LANGUAGE, STOPWORDS, BM25Builder
from retriever.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    folder_bytes,
    library_versions,
    read_manifest,
)
from retriever.models import DEFAULT_MODEL
from retriever.sparse import SPARSE_DIR, KeyTokenIndex, KeyTokenIndexBuilder
from retriever.store import (
    DEFAULT_CHUNK_SIZE,
    EmbeddingStore,
    RayOptions,
    Shard,
    encode_corpus,
    encoding_key,
    key_digest,
)

logger = logging.getLogger(__name__)

_SCRATCH = ".scratch"


@dataclass(frozen=True)
class SearchParams:
    """Search-time settings of approximate indexes, stored as the index's defaults."""

    nprobe: int | None = None
    ef_search: int | None = None

    def faiss(self) -> dict[str, int | None]:
        return {"nprobe": self.nprobe, "efSearch": self.ef_search}

    def __post_init__(self) -> None:
        for name, value in (("--nprobe", self.nprobe), ("--ef-search", self.ef_search)):
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
        )


def _shard_batches(
    shards: Iterable[Shard], pooling: str, first_key: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[Document]]]:
    """``(keys, raw embeddings, documents)`` per shard; keys continue from ``first_key``."""
    key = first_key
    for shard in shards:
        embeddings = np.asarray(shard.embeddings(pooling), dtype=np.float32)
        documents = list(shard.documents())
        yield np.arange(key, key + len(documents), dtype=np.int64), embeddings, documents
        key += len(documents)


def _training_sample(
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


class _PartsWriter:
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
            sparse = self.sparse_builder and self._timed("sparse", self.sparse_builder.finish)
            if self.base is not None:
                base_sparse = KeyTokenIndex.load(self.base / SPARSE_DIR)
                sparse = base_sparse.with_added(sparse) if sparse else base_sparse
            sparse = sparse.without_keys(removed_keys)
            sparse.save(self.staging / SPARSE_DIR)
            counts["sparse"] = sparse.num_documents
        if self.plan.bm25:
            builder = self.bm25_builder
            if builder is None:
                # BM25's statistics cover the whole collection: rebuild it from the docstore.
                builder = BM25Builder()
                for batch in _batched(docstore.items(), DEFAULT_CHUNK_SIZE):
                    keys = np.array([key for key, _ in batch], dtype=np.int64)
                    self._timed(
                        "bm25",
                        lambda b=batch, k=keys: builder.add(k, [d.embedding_text for _, d in b]),
                    )
            bm25 = self._timed("bm25", builder.finish)
            bm25.save(self.staging / BM25_DIR)
            counts["bm25"] = bm25.num_documents
            logger.info(
                "BM25 index: %d documents, %s", bm25.num_documents, _size(self.staging / BM25_DIR)
            )
        docstore.close()
        shutil.rmtree(self.staging / _SCRATCH, ignore_errors=True)
        return counts


def _size(path: Path) -> str:
    return f"{folder_bytes(path) / 2**20:.1f} MiB"


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Indexer:
    """Builds, grows and shrinks index folders with one encoder and one :class:`IndexPlan`."""

    def __init__(
        self,
        encoder: Encoder,
        filter_spec: FilterSpec | None = None,
        *,
        index_type: str = "Flat",
        use_gpu: bool | None = None,
        dense: bool = True,
        sparse: SparseSpec | None = None,
        bm25: bool = False,
        search_params: SearchParams | None = None,
    ) -> None:
        self.encoder = encoder
        self.plan = IndexPlan(
            filter_spec=filter_spec or FilterSpec(),
            index_type=index_type,
            dense=dense,
            sparse=sparse,
            bm25=bm25,
            search_params=search_params or SearchParams(),
            use_gpu=use_gpu,
        )

    @property
    def filter_spec(self) -> FilterSpec:
        return self.plan.filter_spec

    def build(
        self,
        dataset: str | Path,
        out: str | Path,
        *,
        overwrite: bool = False,
        limit: int | None = None,
        store: str | Path | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        restart: bool = False,
    ) -> Path:
        """Scan, encode (resumably, into ``store`` or the cache's store) and assemble
        ``dataset`` into the index path ``out``; returns it."""
        out = Path(out).expanduser().absolute()
        check_destination(out, overwrite)
        scan = scan_corpus(dataset, limit)
        with writer_lock(out):  # for the whole build: a second writer fails before encoding
            mark = time.perf_counter()
            embeddings = encode_corpus(
                self.encoder, scan, folder=store, chunk_size=chunk_size, restart=restart
            )
            encode_seconds = time.perf_counter() - mark
            return self.build_from_store(
                embeddings, out, overwrite=overwrite, timings={"encode": encode_seconds}
            )

    def build_from_store(
        self,
        store: EmbeddingStore,
        out: str | Path,
        *,
        overwrite: bool = False,
        timings: dict[str, float] | None = None,
    ) -> Path:
        """Assemble a complete embedding store into the index path ``out``.

        ``timings`` are earlier stages' seconds (encoding), recorded in the manifest."""
        out = Path(out).expanduser().absolute()
        self._check_store(store)
        shards = store.shards()
        started = time.perf_counter()
        embed_filter = self._filter()
        lens = self._lens(embed_filter)
        pooling = self.encoder.config.pooling
        with writer_lock(out):
            # Checked again under the lock: another writer may have finished meanwhile.
            check_destination(out, overwrite)
            with new_generation(out) as staging:
                writer = _PartsWriter(staging, self.plan, embed_filter, lens, base=None)
                if writer.dense is not None and writer.dense.needs_training:
                    size = training_size(self.plan.backend_spec(), embed_filter.dim, store.count)
                    writer.train(_training_sample(shards, pooling, embed_filter, size))
                for keys, embeddings, documents in _shard_batches(shards, pooling, 0):
                    writer.add(keys, embeddings, documents)
                counts = writer.finish()
                embed_filter.save(staging)
                note = store.source_note
                source = {
                    "op": "build",
                    "source": note.get("source", str(store.folder)),
                    "sha256": store.key["source"]["sha256"],
                    "count": store.count,
                    "skipped_empty": note.get("skipped_empty", 0),
                    "skipped_empty_ids": note.get("skipped_empty_ids", []),
                }
                manifest = self._manifest(
                    embed_filter,
                    writer,
                    counts,
                    next_key=store.count,
                    digest=writer.added_digest,
                    history=[source],
                    timings={
                        **(timings or {}),
                        **writer.timings,
                        "total": time.perf_counter() - started + sum((timings or {}).values()),
                    },
                    staging=staging,
                    store=store,
                )
                _write_manifest(staging, manifest)
        logger.info("index of %d documents written to %s", counts["docstore"], out)
        return out

    def _check_store(self, store: EmbeddingStore) -> None:
        wanted = encoding_key(
            self.encoder,
            store.key["source"]["sha256"],
            store.count,
            kind="documents",
            chunk_size=store.chunk_size,
        )
        if key_digest(wanted) != key_digest(store.key):
            from retriever.store import _describe_difference

            raise RetrieverError(
                f"the embedding store {store.folder} was encoded differently from this "
                f"encoder ({_describe_difference(store.key, wanted)})"
            )

    def _filter(self) -> EmbedFilter:
        embed_filter = EmbedFilter.from_unembedding(self.encoder.unembedding(), self.filter_spec)
        logger.info(
            "EmbedFilter %s: %d -> %d dimensions",
            self.filter_spec.band
            if self.filter_spec.start is None
            else f"start={self.filter_spec.start}",
            embed_filter.model_dim,
            embed_filter.dim,
        )
        return embed_filter

    def _lens(self, embed_filter: EmbedFilter) -> TokenLens | None:
        if self.plan.sparse is None:
            return None
        return TokenLens(self.encoder.unembedding(), embed_filter, self.encoder.tokenizer)

    def _manifest(
        self,
        embed_filter: EmbedFilter,
        writer: _PartsWriter,
        counts: dict[str, int],
        *,
        next_key: int,
        digest: int,
        history: list[dict[str, Any]],
        timings: dict[str, float],
        staging: Path,
        store: EmbeddingStore | None,
    ) -> dict[str, Any]:
        config = self.encoder.config
        plan = self.plan
        count = counts["docstore"]
        backend = getattr(writer, "backend_description", None)
        mismatched = {part: n for part, n in counts.items() if n != count}
        if mismatched:
            raise RetrieverError(f"index parts disagree on the document count: {counts}")
        sizes = {
            part: folder_bytes(staging / name)
            for part, name in (
                ("index", INDEX_FILE),
                ("index", MILVUS_LITE_FILE),
                ("sparse", SPARSE_DIR),
                ("bm25", BM25_DIR),
                ("docstore", DOCSTORE_DIR),
                ("filter", "filter.npy"),
            )
            if (staging / name).exists()
        }
        sizes["total"] = folder_bytes(staging)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "model": self.encoder.describe(),
            "encoder": {**config.to_dict(), "prompt_template": PROMPTS[config.prompt]},
            "filter": embed_filter.describe(),
            "index": {
                "type": plan.index_type,
                "metric": METRIC,
                "normalized": True,
                "dim": embed_filter.dim,
                "count": count,
                "search_params": {
                    k: v for k, v in plan.search_params.faiss().items() if v is not None
                },
                "backend": backend,
            }
            if plan.dense
            else None,
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
            "store": {"folder": str(store.folder), "key_sha256": store.digest}
            if store is not None
            else None,
            "versions": library_versions(),
            "build": {
                "created": stamp,
                "generation": staging.name.removesuffix(".partial"),
                "seconds": {k: round(v, 3) for k, v in timings.items()},
                "bytes": sizes,
                "faiss_gpus": gpu_count(),
            },
        }

    # -- incremental changes ---------------------------------------------------------

    def add(
        self,
        index: str | Path,
        dataset: str | Path,
        *,
        upsert: bool = False,
        limit: int | None = None,
        store: str | Path | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> dict[str, int]:
        """Append a corpus's documents to the index path ``index`` in a new generation.

        Ids already in the index are refused, or replaced with ``upsert=True``; returns
        ``{"added": n, "replaced": m}``. The new documents are encoded through the
        embedding store like a build, so a crashed add resumes.
        """
        out, base, manifest = _open_for_change(index)
        self._check_index_settings(manifest, base)
        scan = scan_corpus(dataset, limit)
        with DocStore.open(base / DOCSTORE_DIR) as existing:
            present = _present_ids(existing, iter_documents(scan))
        if present and not upsert:
            shown = ", ".join(repr(i) for i in present[:5]) + (" ..." if len(present) > 5 else "")
            raise RetrieverError(
                f"{len(present)} of the documents are already in {out} ({shown}); pass "
                "--upsert to replace them, or remove them from the file"
            )
        with writer_lock(out):
            embeddings = encode_corpus(self.encoder, scan, folder=store, chunk_size=chunk_size)
            return self._add_locked(out, base, scan, embeddings, present, upsert)

    def _add_locked(
        self,
        out: Path,
        base: Path,
        scan: Any,
        embeddings: EmbeddingStore,
        present: list[str],
        upsert: bool,
    ) -> dict[str, int]:
        started = time.perf_counter()
        embed_filter = EmbedFilter.load(base)
        with writer_lock(out):
            base, manifest = _same_generation(out, base)
            with new_generation(out) as staging:
                plan = self.plan
                writer = _PartsWriter(
                    staging, plan, embed_filter, self._lens(embed_filter), base, manifest["index"]
                )
                writer.delete(present)
                next_key = manifest["documents"]["next_key"]
                for keys, raw, documents in _shard_batches(
                    embeddings.shards(), self.encoder.config.pooling, next_key
                ):
                    writer.add(keys, raw, documents)
                counts = writer.finish()
                embed_filter.save(staging)
                self._finish_change(
                    staging,
                    manifest,
                    embed_filter,
                    counts,
                    writer,
                    next_key=next_key + writer.added,
                    entry={
                        "op": "upsert" if upsert else "add",
                        "source": str(scan.source),
                        "sha256": scan.sha256,
                        "count": scan.count,
                        "replaced": len(present),
                    },
                    started=started,
                )
        logger.info("added %d documents to %s (%d replaced)", writer.added, out, len(present))
        return {"added": writer.added - len(present), "replaced": len(present)}

    def _check_index_settings(self, manifest: dict[str, Any], base: Path) -> None:
        """Adopt the index's own plan; refuse an encoder that differs from its model."""
        built = manifest["model"]
        if self.encoder.resolved.weights_sha256 != built["weights_sha256"]:
            raise RetrieverError(f"{base} was built with other model weights than this encoder's")
        self.plan = plan_of(manifest, use_gpu=self.plan.use_gpu)
        self.encoder.config = EncoderConfig.from_dict(manifest["encoder"])

    def _finish_change(
        self,
        staging: Path,
        manifest: dict[str, Any],
        embed_filter: EmbedFilter,
        counts: dict[str, int],
        writer: _PartsWriter,
        *,
        next_key: int,
        entry: dict[str, Any],
        started: float,
    ) -> None:
        removed_digest = content_digest(document for _, document in writer.removed)
        digest = combine_digests(
            int(manifest["documents"]["content_sha256"], 16), writer.added_digest, removed_digest
        )
        updated = self._manifest(
            embed_filter,
            writer,
            counts,
            next_key=next_key,
            digest=digest,
            history=[*manifest["documents"].get("history", []), entry],
            timings={**writer.timings, "total": time.perf_counter() - started},
            staging=staging,
            store=None,
        )
        updated["model"] = manifest["model"]
        updated["store"] = manifest.get("store")
        _write_manifest(staging, updated)

    def delete(self, index: str | Path, doc_ids: Iterable[str]) -> int:
        """Remove documents by id (see :func:`delete_documents`)."""
        return delete_documents(index, doc_ids, use_gpu=self.plan.use_gpu)


def plan_of(manifest: dict[str, Any], *, use_gpu: bool | None = None) -> IndexPlan:
    """The plan an existing index was built with, read from its manifest."""
    index = manifest.get("index") or {}
    params = index.get("search_params") or {}
    return IndexPlan(
        filter_spec=FilterSpec.from_dict(manifest["filter"].get("spec", {})),
        index_type=index.get("type", "Flat"),
        dense=bool(manifest.get("index")),
        sparse=SparseSpec.from_dict(manifest["sparse"]) if manifest.get("sparse") else None,
        bm25=bool(manifest.get("bm25")),
        search_params=SearchParams(params.get("nprobe"), params.get("efSearch")),
        use_gpu=use_gpu,
        backend=(index.get("backend") or {}).get("backend", "faiss"),
        milvus_uri=_server_uri(index),
        collection=_collection_name(index),
    )


def _collection_name(index: dict[str, Any]) -> str:
    """The name a user gave (a server generation's own collection is ``NAME__<gen>``)."""
    described = index.get("backend") or {}
    return described.get("alias") or described.get("collection", DEFAULT_COLLECTION)


def _server_uri(index: dict[str, Any]) -> str | None:
    uri = (index.get("backend") or {}).get("uri")
    return None if uri in (None, MILVUS_LITE_FILE) else uri


def _open_for_change(index: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    out = Path(index).expanduser().absolute()
    base = current_generation(out)
    if base is None:
        raise RetrieverError(
            f"{out} is not an index built by `retriever index` (no index link there)"
        )
    return out, base, read_manifest(base)


def _same_generation(out: Path, base: Path) -> tuple[Path, dict[str, Any]]:
    """Under the lock: the generation the change was prepared against must still be
    current (another writer may have published meanwhile)."""
    now = current_generation(out)
    if now != base:
        raise RetrieverError(
            f"{out} changed while this command prepared its change (another writer "
            "published a new generation); run the command again"
        )
    return base, read_manifest(base)


def _present_ids(docstore: DocStore, documents: Iterable[Document]) -> list[str]:
    present: list[str] = []
    for batch in _batched(documents, DEFAULT_CHUNK_SIZE):
        present += list(docstore.keys_of(d.id for d in batch))
    return present


def _write_manifest(staging: Path, manifest: dict[str, Any]) -> None:
    mark_readable(staging)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def delete_documents(
    index: str | Path, doc_ids: Iterable[str], *, use_gpu: bool | None = None
) -> int:
    """Remove documents by id from every part of the index path ``index``, in a new
    generation; returns how many were removed. Ids the index does not hold are refused.

    Needs no model: vectors are removed by key, and BM25 is rebuilt from the docstore.
    """
    doc_ids = list(dict.fromkeys(str(i) for i in doc_ids))
    if not doc_ids:
        raise RetrieverError("no document ids to delete: give ids or --ids-file")
    out, base, manifest = _open_for_change(index)
    with DocStore.open(base / DOCSTORE_DIR) as existing:
        found = existing.keys_of(doc_ids)
    unknown = [i for i in doc_ids if i not in found]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RetrieverError(f"{out} holds no document with id {shown}; nothing was deleted")
    started = time.perf_counter()
    with writer_lock(out):
        base, manifest = _same_generation(out, base)
        plan = plan_of(manifest, use_gpu=use_gpu)
        embed_filter = EmbedFilter.load(base)
        with new_generation(out) as staging:
            writer = _PartsWriter(staging, plan, embed_filter, None, base, manifest["index"])
            writer.delete(doc_ids)
            counts = writer.finish()
            embed_filter.save(staging)
            removed_digest = content_digest(document for _, document in writer.removed)
            updated = json.loads(json.dumps(manifest))
            documents = updated["documents"]
            documents["count"] = counts["docstore"]
            documents["content_sha256"] = (
                f"{combine_digests(int(documents['content_sha256'], 16), 0, removed_digest):064x}"
            )
            documents["history"] = [
                *documents.get("history", []),
                {
                    "op": "delete",
                    "count": len(writer.removed),
                    "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                },
            ]
            for part in ("index", "sparse", "bm25"):
                if updated.get(part):
                    updated[part]["count"] = counts["docstore"]
            if updated.get("index"):
                # A server backend's generation has its own collection.
                updated["index"]["backend"] = writer.backend_description
            updated["build"]["generation"] = staging.name.removesuffix(".partial")
            updated["build"]["seconds"] = {"total": round(time.perf_counter() - started, 3)}
            _write_manifest(staging, updated)
    logger.info("deleted %d documents from %s", len(writer.removed), out)
    return len(writer.removed)


def build_index(
    dataset: str | Path | None,
    out: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    encoder_config: EncoderConfig | None = None,
    filter_spec: FilterSpec | None = None,
    index_type: str = "Flat",
    limit: int | None = None,
    batch_size: int = 16,
    dtype: str = "auto",
    device: str | None = None,
    unembedding_from: str | None = None,
    use_gpu: bool | None = None,
    dense: bool = True,
    sparse: SparseSpec | None = None,
    bm25: bool = False,
    search_params: SearchParams | None = None,
    overwrite: bool = False,
    store: str | Path | None = None,
    from_store: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    restart: bool = False,
    ray: RayOptions | None = None,
    backend: str = "faiss",
    milvus_uri: str | None = None,
    collection: str = DEFAULT_COLLECTION,
) -> Path:
    """Build an index of a BEIR folder or JSONL file; returns its path.

    It holds the filtered dense FAISS index (unless ``dense=False``), plus the key-token
    sparse index with ``sparse`` and a BM25 index with ``bm25=True``. With ``from_store``
    the documents come from a complete embedding store (``retriever encode``) instead of
    ``dataset``, and the store fixes the model and encoding settings; with ``ray`` the
    encoding runs on Ray actors (:mod:`retriever.distributed`).
    """
    out_path = Path(out).expanduser().absolute()
    # Cheap checks first: a bad destination, corpus or setting fails before the model loads.
    check_destination(out_path, overwrite)
    plan = IndexPlan(
        filter_spec=filter_spec or FilterSpec(),
        index_type=index_type,
        dense=dense,
        sparse=sparse,
        bm25=bm25,
        search_params=search_params or SearchParams(),
        use_gpu=use_gpu,
        backend=backend,
        milvus_uri=milvus_uri,
        collection=collection,
    )
    config = encoder_config or EncoderConfig()
    if from_store is not None:
        embeddings = EmbeddingStore.open(from_store)
        embeddings.shards()  # refuses an incomplete store before the model loads
        key = embeddings.key
        model, revision, dtype = key["model"]["name"], key["model"]["revision"], key["dtype"]
        config = dataclasses.replace(
            config,
            prompt=key["prompt"],
            max_length=key["max_length"],
            document_instruction=key["instruction"],
        )
    else:
        if dataset is None:
            raise RetrieverError("give a DATASET to index, or --from STORE")
        scan = scan_corpus(dataset, limit)
    _check_plan(plan)
    _check_filter_size(plan.filter_spec, model, revision)
    encoder = Encoder.load(
        model,
        config,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        revision=revision,
        unembedding_from=unembedding_from,
        expected_weights_sha256=key["model"]["weights_sha256"] if from_store else None,
        expected_by=f"the embedding store {from_store}",
    )
    plan.filter_spec.kept_dims(encoder.hidden_size)
    indexer = Indexer(encoder)
    indexer.plan = plan
    if from_store is not None:
        return indexer.build_from_store(embeddings, out_path, overwrite=overwrite)
    with writer_lock(out_path):  # for the whole build: a second writer fails before encoding
        check_destination(out_path, overwrite)
        mark = time.perf_counter()
        embeddings = encode_corpus(
            encoder, scan, folder=store, chunk_size=chunk_size, restart=restart, ray=ray
        )
        return indexer.build_from_store(
            embeddings,
            out_path,
            overwrite=overwrite,
            timings={"encode": time.perf_counter() - mark},
        )


def _check_filter_size(spec: FilterSpec, model: str, revision: str | None) -> None:
    """--tau/--dim against the model's hidden size, read from its config before loading."""
    from retriever.models import configured_hidden_size, resolve_model

    hidden = configured_hidden_size(resolve_model(model, revision))
    if hidden is not None:
        spec.kept_dims(hidden)


def _check_plan(plan: IndexPlan) -> None:
    """Checks that need no model: search parameters must fit the index type."""
    from retriever.faiss_install import faiss

    if not plan.dense:
        return
    try:
        # The dimension is not known yet; 64 parses every type whose codes divide it.
        index = faiss.index_factory(64, plan.index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return  # reported with the real dimension once the model is known
    flags = {"nprobe": "--nprobe", "efSearch": "--ef-search"}
    for name, value in plan.search_params.faiss().items():
        if value is not None and not has_parameter(index, name):
            raise RetrieverError(f"{flags[name]} does not apply to --index-type {plan.index_type}")
