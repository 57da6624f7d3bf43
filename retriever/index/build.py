"""Build index folders, and grow and shrink them: the one path from text to an index.

    scan corpus -> encode into the embedding store (retriever.store.encoding,
                   retriever.store.embeddings)
                -> filter -> assemble parts (retriever.index.assembly) -> publish

:func:`build_index` is the one build entry point, from a corpus or from a complete
embedding store: the command line's ``index``, the benchmark and Ray encoding all go
through it. :class:`Indexer` assembles a store into a new index (the build's last step)
and adds and deletes documents (:mod:`retriever.index.changes`).

Every stage streams: the corpus is read chunk by chunk, each chunk's raw embeddings are
stored as a shard, and the index is assembled shard by shard, so a build's memory is one
chunk plus the index it writes. Writers (build, add, delete) hold the index path's lock
and write a new generation that replaces the old one in one atomic swap
(retriever.core.generations): a crash leaves the previous index, and the store's shards let
the rerun resume where encoding stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.config import EncoderConfig, FilterSpec, SparseSpec
from retriever.core.errors import RetrieverError
from retriever.core.generations import (
    check_destination,
    new_generation,
    refuse_inside_index,
    writer_lock,
)
from retriever.data.datasets import CorpusScan, scan_corpus
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.encode.models import DEFAULT_MODEL
from retriever.index.assembly import (
    IndexPlan,
    PartsWriter,
    SearchParams,
    index_manifest,
    shard_batches,
    token_lens,
    training_sample,
    write_manifest,
)
from retriever.index.changes import add_documents, delete_documents
from retriever.parts.dense.backends import DEFAULT_COLLECTION, EXTERNAL_PARTS, training_size
from retriever.parts.dense.faiss_index import has_parameter
from retriever.store.embeddings import (
    DEFAULT_STORE_PRECISION,
    EmbeddingStore,
    covers,
    describe_difference,
    encoding_key,
    record_index,
)
from retriever.store.encoding import encode_corpus
from retriever.store.on_ray import RayOptions
from retriever.store.pacing import DiskNeed

# IndexPlan, SearchParams and delete_documents are part of this module's interface too.
__all__ = ["IndexPlan", "Indexer", "SearchParams", "build_index", "delete_documents"]

logger = logging.getLogger(__name__)


class Indexer:
    """Writes index folders with one encoder: assembles an embedding store into a new index
    by ``plan``, and adds documents to an index or deletes them (an existing index keeps
    its own plan; only ``plan.use_gpu`` applies to it)."""

    def __init__(self, encoder: Encoder, plan: IndexPlan | None = None) -> None:
        self.encoder = encoder
        self.plan = plan or IndexPlan()

    def assemble(
        self,
        store: EmbeddingStore,
        out: str | Path,
        *,
        embed_filter: EmbedFilter | None = None,
        overwrite: bool = False,
        timings: dict[str, float] | None = None,
    ) -> Path:
        """Assemble a complete embedding store into the index path ``out``; returns it.

        ``embed_filter`` is the projection the index stores (default: the data-free
        EmbedFilter of ``plan.filter_spec``); ``timings`` are earlier stages' seconds
        (encoding), recorded in the manifest.
        """
        out = Path(out).expanduser().absolute()
        self._check_store(store)
        shards = store.shards()
        started = time.perf_counter()
        if embed_filter is None:
            embed_filter = self._data_free_filter()
        lens = token_lens(self.encoder, self.plan, embed_filter)
        pooling = self.encoder.config.pooling
        with writer_lock(out):
            # Checked again under the lock: another writer may have finished meanwhile.
            check_destination(out, overwrite)
            with new_generation(out, external=EXTERNAL_PARTS) as staging:
                writer = PartsWriter(staging, self.plan, embed_filter, lens, base=None)
                if writer.dense is not None and writer.dense.needs_training:
                    size = training_size(self.plan.backend_spec(), embed_filter.dim, store.count)
                    writer.train(training_sample(shards, pooling, embed_filter, size))
                for keys, embeddings, documents in shard_batches(shards, pooling, 0):
                    writer.add(keys, embeddings, documents)
                counts = writer.finish()
                embed_filter.save(staging)
                earlier = timings or {}
                total = time.perf_counter() - started + sum(earlier.values())
                manifest = index_manifest(
                    self.encoder,
                    self.plan,
                    embed_filter,
                    writer,
                    counts,
                    next_key=store.count,
                    digest=writer.added_digest,
                    history=[_build_entry(store)],
                    timings={**earlier, **writer.timings, "total": total},
                    staging=staging,
                    store=store,
                )
                write_manifest(staging, manifest)
        try:
            # A note for `retriever stores` (which indexes use a store), not part of the
            # index: failing to write it must not fail a build that is already published.
            record_index(store.folder, out)
        except OSError as exc:
            logger.warning(
                "could not note the index %s in its store %s: %s", out, store.folder, exc
            )
        logger.info("index of %d documents written to %s", counts["docstore"], out)
        return out

    def add(
        self,
        index: str | Path,
        dataset: str | Path,
        *,
        upsert: bool = False,
        limit: int | None = None,
        store: str | Path | None = None,
        chunk_size: int | None = None,
        store_precision: str = DEFAULT_STORE_PRECISION,
    ) -> dict[str, int]:
        """Append a corpus's documents to the index path ``index`` (see
        :func:`retriever.index.changes.add_documents`); returns ``{"added": n, "replaced": m}``."""
        return add_documents(
            self.encoder,
            index,
            dataset,
            upsert=upsert,
            limit=limit,
            store=store,
            chunk_size=chunk_size,
            store_precision=store_precision,
            use_gpu=self.plan.use_gpu,
        )

    def delete(self, index: str | Path, doc_ids: Iterable[str]) -> int:
        """Remove documents by id (see :func:`retriever.index.changes.delete_documents`)."""
        return delete_documents(index, doc_ids, use_gpu=self.plan.use_gpu)

    def _check_store(self, store: EmbeddingStore) -> None:
        wanted = encoding_key(
            self.encoder,
            store.key["source"]["sha256"],
            store.count,
            kind="documents",
            chunk_size=store.chunk_size,
            poolings=[self.encoder.config.pooling],
            precision=store.precision,
        )
        # Assembly encodes nothing: whichever runtime encoded the store is fine here.
        wanted.pop("runtime", None)
        if "runtime" in store.key:
            wanted["runtime"] = store.key["runtime"]
        if not covers(store.key, wanted):
            raise RetrieverError(
                f"the embedding store {store.folder} was encoded differently from this "
                f"encoder ({describe_difference(store.key, wanted)})"
            )

    def _data_free_filter(self) -> EmbedFilter:
        spec = self.plan.filter_spec
        embed_filter = EmbedFilter.from_unembedding(self.encoder.unembedding(), spec)
        logger.info(
            "EmbedFilter %s: %d -> %d dimensions",
            spec.band if spec.start is None else f"start={spec.start}",
            embed_filter.model_dim,
            embed_filter.dim,
        )
        return embed_filter


def _build_entry(store: EmbeddingStore) -> dict[str, Any]:
    """The manifest's history entry of a build from ``store``."""
    note = store.source_note
    return {
        "op": "build",
        "source": note.get("source", str(store.folder)),
        "sha256": store.key["source"]["sha256"],
        "count": store.count,
        "skipped_empty": note.get("skipped_empty", 0),
        "skipped_empty_ids": note.get("skipped_empty_ids", []),
    }


@dataclass(frozen=True)
class _ModelLoad:
    """How :func:`build_index` loads the model when it is given no encoder."""

    model: str
    revision: str | None
    dtype: str
    device: str | None
    batch_size: int
    unembedding_from: str | None
    runtime: str


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
    chunk_size: int | None = None,
    store_precision: str = DEFAULT_STORE_PRECISION,
    restart: bool = False,
    ray: RayOptions | None = None,
    backend: str = "faiss",
    milvus_uri: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    embed_filter: EmbedFilter | None = None,
    encoder: Encoder | None = None,
    storage: str | None = None,
    binary_centre: str = "documents",
    ef_construction: int | None = None,
    rescore_vectors: str = "int8",
    runtime: str = "torch",
) -> Path:
    """Build an index of a BEIR folder or JSONL file, or of an embedding store (``dataset``
    None, ``from_store``); returns its path.

    The store fixes the model, dtype, prompt, max length and document instruction;
    ``encoder_config`` still chooses the pooling. ``encoder`` is a loaded model to use
    instead of loading ``model`` (with ``encoder_config``, if given, as its settings);
    ``embed_filter`` a ready projection (a fitted baseline) to store instead of the
    EmbedFilter of ``filter_spec``. Store options are ``encode_corpus``'s, ``runtime``
    ``Encoder.load``'s; ``storage``, ``binary_centre``, ``ef_construction`` and
    ``rescore_vectors`` say how the dense index stores its vectors (``parts.dense.codes``).
    """
    out_path = Path(out).expanduser().absolute()
    # Cheap checks first: a bad destination, corpus or setting fails before the model loads.
    check_destination(out_path, overwrite)
    _check_arguments(embed_filter, filter_spec, chunk_size, store)
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
        storage=storage,
        binary_centre=binary_centre,
        ef_construction=ef_construction,
        rescore_vectors=rescore_vectors,
    )
    _check_plan(plan, embed_filter.dim if embed_filter is not None else None)
    source = _open_source(dataset, limit, from_store)
    load = _ModelLoad(model, revision, dtype, device, batch_size, unembedding_from, runtime)
    encoder = _ready_encoder(encoder, encoder_config, source, load, embed_filter, plan)
    indexer = Indexer(encoder, plan)
    with writer_lock(out_path):  # for the whole build: a second writer fails before encoding
        check_destination(out_path, overwrite)
        stage = _EncodeStage(store, chunk_size, store_precision, restart, ray)
        embeddings, timings = _encoded(encoder, source, stage, plan, out_path)
        return indexer.assemble(
            embeddings, out_path, embed_filter=embed_filter, overwrite=overwrite, timings=timings
        )


def _check_arguments(
    embed_filter: EmbedFilter | None,
    filter_spec: FilterSpec | None,
    chunk_size: int | None,
    store: str | Path | None,
) -> None:
    if store is not None:
        refuse_inside_index(store, "--store")
    if embed_filter is not None and filter_spec is not None:
        raise RetrieverError("give filter_spec or embed_filter, not both")
    if chunk_size is not None and chunk_size < 1:
        raise RetrieverError(f"--chunk-size must be at least 1, got {chunk_size}")


def _open_source(
    dataset: str | Path | None, limit: int | None, from_store: str | Path | None
) -> EmbeddingStore | CorpusScan:
    """The complete store to assemble, or the scanned corpus to encode."""
    if from_store is not None:
        if dataset is not None:
            raise RetrieverError("give either DATASET or --from STORE, not both")
        embeddings = EmbeddingStore.open(from_store)
        embeddings.shards()  # refuses an incomplete store before the model loads
        return embeddings
    if dataset is None:
        raise RetrieverError("give a DATASET to index, or --from STORE")
    return scan_corpus(dataset, limit)


def _ready_encoder(
    encoder: Encoder | None,
    config: EncoderConfig | None,
    source: EmbeddingStore | CorpusScan,
    load: _ModelLoad,
    embed_filter: EmbedFilter | None,
    plan: IndexPlan,
) -> Encoder:
    """The build's encoder, with the settings the documents are (or were) encoded with."""
    settings = config or (encoder.config if encoder is not None else EncoderConfig())
    if isinstance(source, EmbeddingStore):
        key = source.key
        if settings.pooling not in source.poolings:
            raise RetrieverError(
                f"the embedding store {source.folder} keeps {'+'.join(source.poolings)} "
                f"pooling only, not {settings.pooling}: encode a store with it (`retriever "
                f"encode --pooling {settings.pooling}`)"
            )
        settings = dataclasses.replace(
            settings,
            prompt=key["prompt"],
            max_length=key["max_length"],
            document_instruction=key["instruction"],
        )
    if encoder is None:
        size_check = plan.filter_spec if embed_filter is None else None
        encoder = _load_encoder(source, settings, load, size_check)
    elif encoder.config != settings:
        # A copy sharing the loaded model: the caller's encoder keeps its own settings.
        encoder = copy.copy(encoder)
        encoder.config = settings
    if embed_filter is None:  # the real dimension, known now: checked before encoding
        _check_plan(plan, plan.filter_spec.kept_dims(encoder.hidden_size))
    elif embed_filter.model_dim != encoder.hidden_size:
        raise RetrieverError(
            f"embed_filter projects {embed_filter.model_dim}-dimensional embeddings, but the "
            f"model's hidden size is {encoder.hidden_size}"
        )
    return encoder


def _load_encoder(
    source: EmbeddingStore | CorpusScan,
    config: EncoderConfig,
    load: _ModelLoad,
    filter_spec: FilterSpec | None,
) -> Encoder:
    """Load the model (a store's own, checked by its weights' hash); ``filter_spec``'s
    size is checked first, against the hidden size the model's config declares."""
    expected, expected_by = None, "the index"
    if isinstance(source, EmbeddingStore):
        model = source.key["model"]
        expected, expected_by = model["weights_sha256"], f"the embedding store {source.folder}"
        load = dataclasses.replace(
            load, model=model["name"], revision=model["revision"], dtype=source.key["dtype"]
        )
    if filter_spec is not None:
        _check_filter_size(filter_spec, load.model, load.revision)
    return Encoder.load(
        load.model,
        config,
        dtype=load.dtype,
        device=load.device,
        batch_size=load.batch_size,
        revision=load.revision,
        unembedding_from=load.unembedding_from,
        expected_weights_sha256=expected,
        expected_by=expected_by,
        # A store is assembled, never encoded: no other runtime to set up for it.
        runtime="torch" if isinstance(source, EmbeddingStore) else load.runtime,
    )


@dataclass(frozen=True)
class _EncodeStage:
    """How :func:`build_index` encodes a corpus: into which store, in what shards."""

    store: str | Path | None
    chunk_size: int | None
    precision: str
    restart: bool
    ray: RayOptions | None


def _encoded(
    encoder: Encoder,
    source: EmbeddingStore | CorpusScan,
    stage: _EncodeStage,
    plan: IndexPlan,
    out: Path,
) -> tuple[EmbeddingStore, dict[str, float]]:
    """The complete store of the documents, and the seconds spent encoding them."""
    if isinstance(source, EmbeddingStore):
        return source, {}
    mark = time.perf_counter()
    embeddings = encode_corpus(
        encoder,
        source,
        folder=stage.store,
        chunk_size=stage.chunk_size,
        precision=stage.precision,
        restart=stage.restart,
        ray=stage.ray,
        index_need=DiskNeed("index", out, _index_bytes(plan, encoder, source)),
    )
    return embeddings, {"encode": time.perf_counter() - mark}


# Bytes per stored value of each storage; a factory string's own codes count as float32,
# an upper bound.
_VALUE_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "binary": 0.125}


def _index_bytes(plan: IndexPlan, encoder: Encoder, scan: CorpusScan) -> int:
    """About what the index of ``scan`` will take: dense codes and ids (and rescore
    vectors), the docstore (LMDB takes about twice the documents' bytes), and the sparse
    (K pairs of 4-byte token and weight per document) and BM25 parts."""
    dims = plan.filter_spec.kept_dims(encoder.hidden_size)
    per_document = 2.0 * scan.document_bytes / max(scan.count, 1)
    if plan.dense:
        per_document += dims * _VALUE_BYTES.get(plan.storage or "float32", 4.0) + 8
        if plan.search_params.rescore:
            per_document += dims * (1 if plan.rescore_vectors == "int8" else 4)
    if plan.sparse is not None:
        per_document += 8 * plan.sparse.doc_tokens
    if plan.bm25:
        per_document += scan.document_bytes / max(scan.count, 1)
    return int(per_document * scan.count)


def _check_filter_size(spec: FilterSpec, model: str, revision: str | None) -> None:
    """--tau/--dim against the model's hidden size, read from its config before loading."""
    from retriever.encode.models import configured_hidden_size, resolve_model

    hidden = configured_hidden_size(resolve_model(model, revision))
    if hidden is not None:
        spec.kept_dims(hidden)


# Dimensions an index type is parsed at before the model gives the real one: a type whose
# codes must divide the dimension (PQ16, OPQ8_64, PCA96) parses at one of them.
_TRIAL_DIMS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 5040)


def _check_plan(plan: IndexPlan, dim: int | None = None) -> None:
    """Checks that need no model: the index type must parse (at ``dim``, the filtered
    dimension once known, else at some dimension), and search parameters must fit it."""
    if not plan.dense:
        return
    index = _parsed_index_type(plan, dim)
    if index is None:
        return
    # HNSW's efConstruction goes with its efSearch: both apply to the same indexes.
    checks = {
        "--nprobe": ("nprobe", plan.search_params.nprobe),
        "--ef-search": ("efSearch", plan.search_params.ef_search),
        "--ef-construction": ("efSearch", plan.ef_construction),
    }
    for flag, (name, value) in checks.items():
        if value is not None and not has_parameter(index, name):
            raise RetrieverError(f"{flag} does not apply to --index-type {plan.index_type}")


def _parsed_index_type(plan: IndexPlan, dim: int | None) -> Any:
    """An empty FAISS index of the plan's type and storage, as the build makes it; None for
    a Milvus index name that FAISS does not know (its backend spec checked it)."""
    from retriever.parts.dense.codes import binary_bits
    from retriever.parts.dense.faiss_index import is_binary_type
    from retriever.parts.dense.faiss_install import faiss

    if plan.backend != "faiss":
        try:
            return faiss.index_factory(64, plan.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError:
            return None
    layout = plan.backend_spec().layout
    reason = ""
    for trial in _TRIAL_DIMS if dim is None else (dim,):
        width = binary_bits(trial) if layout.binary else trial
        try:
            if is_binary_type(layout.factory):
                return faiss.index_binary_factory(width, layout.factory)
            return faiss.index_factory(width, layout.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            reason = reason or _faiss_reason(exc)
    where = f" at dimension {dim}" if dim is not None else ""
    raise RetrieverError(
        f"invalid --index-type {plan.index_type!r}{where}: {reason}; give Flat, HNSWm, IVFn "
        "or a faiss.index_factory string"
    )


def _faiss_reason(exc: RuntimeError) -> str:
    """FAISS's own words, without the C++ function and source line it prefixes them with."""
    text = (str(exc).strip().splitlines() or ["unknown index type"])[-1]
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return re.sub(r"^Error: '.*?' failed: ", "", text)
