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
from pathlib import Path
from typing import Any

from retriever.core.config import DEFAULT_STORAGE
from retriever.core.errors import RetrieverError
from retriever.core.generations import check_destination, new_generation, writer_lock
from retriever.core.spec import DenseSpec, FilterSpec, IndexSpec, ModelSpec
from retriever.data.datasets import CorpusScan, scan_corpus
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.index.assembly import (
    PartsWriter,
    index_manifest,
    publish_manifest,
    shard_batches,
    store_entry,
    token_lens,
    training_sample,
)
from retriever.index.changes import add_documents, delete_documents
from retriever.index.options import BuildOptions
from retriever.parts.dense.backends import EXTERNAL_PARTS, check_dense_spec, training_size
from retriever.parts.dense.faiss_index import has_parameter
from retriever.parts.dense.gpu import GpuSetting
from retriever.store.embeddings import (
    EmbeddingStore,
    covers,
    describe_difference,
    encoding_key,
    record_index,
)
from retriever.store.encoding import encode_corpus
from retriever.store.pacing import DiskNeed

# BuildOptions and delete_documents are part of this module's interface too.
__all__ = ["BuildOptions", "Indexer", "build_index", "delete_documents"]

logger = logging.getLogger(__name__)


class Indexer:
    """Writes index folders with one encoder: assembles an embedding store into a new index
    by ``spec`` (default: the defaults, with the encoder's own settings), and adds
    documents to an index or deletes them (an existing index keeps its own spec)."""

    def __init__(
        self, encoder: Encoder, spec: IndexSpec | None = None, *, use_gpu: GpuSetting = None
    ) -> None:
        self.encoder = encoder
        self.spec = spec or IndexSpec(encoder=encoder.config)
        self.use_gpu = use_gpu

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
        EmbedFilter of ``spec.filter``); ``timings`` are earlier stages' seconds
        (encoding), recorded in the manifest.
        """
        out = Path(out).expanduser().absolute()
        self._check_store(store)
        started = time.perf_counter()
        if embed_filter is None:
            embed_filter = self._data_free_filter()
        spec = dataclasses.replace(self.spec, filter=embed_filter.spec)
        with writer_lock(out):
            # Checked again under the lock: another writer may have finished meanwhile.
            check_destination(out, overwrite)
            with new_generation(out, external=EXTERNAL_PARTS) as staging:
                writer, counts = self._write_parts(store, staging, spec, embed_filter)
                earlier = timings or {}
                total = time.perf_counter() - started + sum(earlier.values())
                manifest = index_manifest(
                    spec,
                    self.encoder.describe(),
                    embed_filter,
                    writer,
                    counts,
                    {
                        "next_key": store.count,
                        "content_sha256": f"{writer.added_digest:064x}",
                        "history": [_build_entry(store)],
                    },
                    timings={**earlier, **writer.timings, "total": total},
                    store=store_entry(store),
                )
                publish_manifest(staging, manifest)
        _note_in_store(store, out)
        logger.info("index of %d documents written to %s", counts["docstore"], out)
        return out

    def _write_parts(
        self, store: EmbeddingStore, staging: Path, spec: IndexSpec, embed_filter: EmbedFilter
    ) -> tuple[PartsWriter, dict[str, int]]:
        shards = store.shards()
        pooling = self.encoder.config.pooling
        lens = token_lens(self.encoder, spec, embed_filter)
        writer = PartsWriter(staging, spec, embed_filter, lens, use_gpu=self.use_gpu)
        if writer.dense is not None and writer.dense.needs_training:
            size = training_size(spec.dense, embed_filter.dim, store.count)
            writer.train(training_sample(shards, pooling, embed_filter, size))
        for keys, embeddings, documents in shard_batches(shards, pooling, 0):
            writer.add(keys, embeddings, documents)
        counts = writer.finish()
        embed_filter.save(staging)
        return writer, counts

    def add(
        self,
        index: str | Path,
        dataset: str | Path,
        *,
        upsert: bool = False,
        options: BuildOptions | None = None,
    ) -> dict[str, int]:
        """Append a corpus's documents to the index path ``index`` (see
        :func:`retriever.index.changes.add_documents`); returns ``{"added": n, "replaced": m}``."""
        options = options or BuildOptions(use_gpu=self.use_gpu)
        return add_documents(index, dataset, upsert=upsert, options=options, encoder=self.encoder)

    def delete(self, index: str | Path, doc_ids: Iterable[str]) -> int:
        """Remove documents by id (see :func:`retriever.index.changes.delete_documents`)."""
        return delete_documents(index, doc_ids, use_gpu=self.use_gpu)

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
        spec = self.spec.filter
        embed_filter = EmbedFilter.from_unembedding(self.encoder.unembedding(), spec)
        logger.info(
            "EmbedFilter %s: %d -> %d dimensions",
            spec.band if spec.start is None else f"start={spec.start}",
            embed_filter.model_dim,
            embed_filter.dim,
        )
        return embed_filter


def _note_in_store(store: EmbeddingStore, out: Path) -> None:
    try:
        # A note for `retriever stores` (which indexes use a store), not part of the
        # index: failing to write it must not fail a build that is already published.
        record_index(store.folder, out)
    except OSError as exc:
        logger.warning("could not note the index %s in its store %s: %s", out, store.folder, exc)


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


def build_index(
    dataset: str | Path | None,
    out: str | Path,
    spec: IndexSpec | None = None,
    options: BuildOptions | None = None,
    *,
    encoder: Encoder | None = None,
    embed_filter: EmbedFilter | None = None,
) -> Path:
    """Build an index of a BEIR folder or JSONL file (``dataset``), or of a complete
    embedding store (``dataset`` None, ``options.from_store``), as ``spec`` says; returns
    its path.

    A store fixes the model, dtype, prompt, max length and document instruction (the spec
    saved says so); the spec still chooses the pooling. ``encoder`` is a loaded model to
    use instead of loading ``spec.model`` (with ``spec.encoder``, or its own settings
    when no spec is given); ``embed_filter`` a ready projection (a fitted baseline) to
    store instead of the EmbedFilter of ``spec.filter``. ``options`` say how the build
    runs (:class:`BuildOptions`), never what it builds.
    """
    options = options or BuildOptions()
    if spec is None:
        spec = IndexSpec(encoder=encoder.config) if encoder is not None else IndexSpec()
    out_path = Path(out).expanduser().absolute()
    # Cheap checks first: a bad destination, corpus or setting fails before the model loads.
    check_destination(out_path, options.overwrite)
    _check_filter_choice(spec, embed_filter)
    check_spec(spec, embed_filter.dim if embed_filter is not None else None)
    source = _open_source(dataset, options)
    # For the whole build, taken before the model loads: a second writer fails at once.
    with writer_lock(out_path):
        check_destination(out_path, options.overwrite)
        encoder, spec = _ready_encoder(encoder, spec, source, options, embed_filter)
        indexer = Indexer(encoder, spec, use_gpu=options.use_gpu)
        embeddings, timings = _encoded(encoder, source, options, spec, out_path)
        return indexer.assemble(
            embeddings,
            out_path,
            embed_filter=embed_filter,
            overwrite=options.overwrite,
            timings=timings,
        )


def _check_filter_choice(spec: IndexSpec, embed_filter: EmbedFilter | None) -> None:
    if embed_filter is not None and spec.filter not in (FilterSpec(), embed_filter.spec):
        raise RetrieverError("give the spec's filter or an embed_filter, not both")


def _open_source(dataset: str | Path | None, options: BuildOptions) -> EmbeddingStore | CorpusScan:
    """The complete store to assemble, or the scanned corpus to encode."""
    if options.from_store is not None:
        if dataset is not None:
            raise RetrieverError("give either DATASET or --from STORE, not both")
        embeddings = EmbeddingStore.open(options.from_store)
        embeddings.shards()  # refuses an incomplete store before the model loads
        return embeddings
    if dataset is None:
        raise RetrieverError("give a DATASET to index, or --from STORE")
    return scan_corpus(dataset, options.limit)


def _ready_encoder(
    encoder: Encoder | None,
    spec: IndexSpec,
    source: EmbeddingStore | CorpusScan,
    options: BuildOptions,
    embed_filter: EmbedFilter | None,
) -> tuple[Encoder, IndexSpec]:
    """The build's encoder, and the spec as the index is built: with the model and
    settings the documents are (or were) encoded with."""
    if isinstance(source, EmbeddingStore):
        spec = _spec_of_store(spec, source)
    if encoder is None:
        size_check = spec.filter if embed_filter is None else None
        encoder = _load_encoder(source, spec, options, size_check)
    else:
        spec = dataclasses.replace(spec, model=_model_spec_of(encoder))
        if encoder.config != spec.encoder:
            # A copy sharing the loaded model: the caller's encoder keeps its own settings.
            encoder = copy.copy(encoder)
            encoder.config = spec.encoder
    if embed_filter is None:  # the real dimension, known now: checked before encoding
        check_spec(spec, spec.filter.kept_dims(encoder.hidden_size))
    elif embed_filter.model_dim != encoder.hidden_size:
        raise RetrieverError(
            f"embed_filter projects {embed_filter.model_dim}-dimensional embeddings, but the "
            f"model's hidden size is {encoder.hidden_size}"
        )
    return encoder, spec


def _spec_of_store(spec: IndexSpec, store: EmbeddingStore) -> IndexSpec:
    """``spec`` with the model and encoding a store fixes (the pooling stays the spec's,
    among the store's)."""
    key = store.key
    if spec.encoder.pooling not in store.poolings:
        raise RetrieverError(
            f"the embedding store {store.folder} keeps {'+'.join(store.poolings)} "
            f"pooling only, not {spec.encoder.pooling}: encode a store with it (`retriever "
            f"encode --pooling {spec.encoder.pooling}`)"
        )
    model = key["model"]
    return dataclasses.replace(
        spec,
        model=dataclasses.replace(
            spec.model, name=model["name"], revision=model["revision"], dtype=key["dtype"]
        ),
        encoder=dataclasses.replace(
            spec.encoder,
            prompt=key["prompt"],
            max_length=key["max_length"],
            document_instruction=key["instruction"],
        ),
    )


def _model_spec_of(encoder: Encoder) -> ModelSpec:
    """The model spec a loaded encoder answers to."""
    described = encoder.describe()
    borrowed = described.get("unembedding_from") or {}
    return ModelSpec(
        name=described["name"],
        revision=described["revision"],
        dtype=described["dtype"],
        unembedding_from=borrowed.get("name"),
    )


def _load_encoder(
    source: EmbeddingStore | CorpusScan,
    spec: IndexSpec,
    options: BuildOptions,
    filter_spec: FilterSpec | None,
) -> Encoder:
    """Load the model (a store's own, checked by its weights' hash); ``filter_spec``'s
    size is checked first, against the hidden size the model's config declares."""
    expected, expected_by = None, "the index"
    if isinstance(source, EmbeddingStore):
        expected = source.key["model"]["weights_sha256"]
        expected_by = f"the embedding store {source.folder}"
    model = spec.model
    if filter_spec is not None:
        _check_filter_size(filter_spec, model.name, model.revision)
    return Encoder.load(
        model.name,
        spec.encoder,
        dtype=model.dtype,
        device=options.device,
        batch_size=options.batch_size,
        revision=model.revision,
        unembedding_from=model.unembedding_from,
        expected_weights_sha256=expected,
        expected_by=expected_by,
        # A store is assembled, never encoded: no other runtime to set up for it.
        runtime="torch" if isinstance(source, EmbeddingStore) else options.runtime,
    )


def _encoded(
    encoder: Encoder,
    source: EmbeddingStore | CorpusScan,
    options: BuildOptions,
    spec: IndexSpec,
    out: Path,
) -> tuple[EmbeddingStore, dict[str, float]]:
    """The complete store of the documents, and the seconds spent encoding them."""
    if isinstance(source, EmbeddingStore):
        return source, {}
    mark = time.perf_counter()
    embeddings = encode_corpus(
        encoder,
        source,
        folder=options.store,
        chunk_size=options.chunk_size,
        precision=options.store_precision,
        restart=options.restart,
        ray=options.ray,
        index_need=DiskNeed("index", out, estimated_index_bytes(spec, encoder, source)),
    )
    return embeddings, {"encode": time.perf_counter() - mark}


# Bytes per stored value of each storage; a factory string's own codes count as float32,
# an upper bound.
_VALUE_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "binary": 0.125}
# The small files (manifest, filter.json, READERS, LMDB's lock and first pages, the parts'
# descriptions) and a block of rounding for each file a generation holds.
_SMALL_FILES = 256 * 1024


def estimated_index_bytes(spec: IndexSpec, encoder: Encoder, scan: CorpusScan) -> int:
    """An upper estimate of what the index of ``scan`` writes, every file counted: the
    filter (k x d float32), the dense codes, ids and graph or lists, the binary centre and
    rescore vectors, the docstore (LMDB takes about twice the documents' bytes), the
    sparse part (K token and weight pairs per document, and a pointer per vocabulary
    token), BM25 (about the documents' bytes again) and the small files."""
    hidden = encoder.hidden_size
    dims = spec.filter.kept_dims(hidden)
    count, text = scan.count, scan.document_bytes
    total = dims * hidden * 4 + 2 * text + _SMALL_FILES
    if spec.dense is not None:
        total += _dense_bytes(spec.dense, dims, count)
    if spec.sparse is not None:
        vocabulary = int(encoder.describe()["vocab_size"])
        total += count * (8 * spec.sparse.doc_tokens + 8) + 8 * (vocabulary + 1)
    if spec.bm25:
        total += 2 * text + 8 * count
    return int(total)


def _dense_bytes(dense: DenseSpec, dims: int, count: int) -> float:
    """Codes and ids, an HNSW graph's links or IVF's centroids, the binary or RaBitQ
    centre and the rescore vectors with their keys and ranges."""
    storage = dense.storage or DEFAULT_STORAGE
    if dense.rabitq_bits:  # bits per value, and two floats per vector
        total = count * (dims * dense.rabitq_bits / 8 + 8 + 16) + dims * 4
    else:
        total = count * (dims * _VALUE_BYTES.get(storage, 4.0) + 16) + dims * 4
    if links := re.search(r"HNSW(\d*)", dense.index_type):
        total += count * (8 * int(links[1] or 32) + 16)
    if lists := re.search(r"IVF(\d+)", dense.index_type):
        total += int(lists[1]) * dims * 4
    if dense.rescore_precision:
        width = 1 if dense.rescore_precision == "int8" else 4
        total += count * (dims * width + 8) + 2 * dims * 4
    return total


def _check_filter_size(spec: FilterSpec, model: str, revision: str | None) -> None:
    """--tau/--dim against the model's hidden size, read from its config before loading."""
    from retriever.encode.models import configured_hidden_size, resolve_model

    hidden = configured_hidden_size(resolve_model(model, revision))
    if hidden is not None:
        spec.kept_dims(hidden)


# Dimensions an index type is parsed at before the model gives the real one: a type whose
# codes must divide the dimension (PQ16, OPQ8_64, PCA96) parses at one of them.
_TRIAL_DIMS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 5040)


def check_spec(spec: IndexSpec, dim: int | None = None) -> None:
    """Checks of a spec that need FAISS or a backend but no model: the index type must
    parse (at ``dim``, the filtered dimension once known, else at some dimension), the
    backend must hold it, and search parameters and build knobs must apply to it."""
    dense = spec.dense
    if dense is None:
        return
    check_dense_spec(dense)
    index = _parsed_index_type(dense, dim)
    if index is None:
        return
    # HNSW's efConstruction goes with its efSearch: both apply to the same indexes.
    checks = {
        "--nprobe": ("nprobe", dense.search.nprobe),
        "--ef-search": ("efSearch", dense.search.ef_search),
        "--ef-construction": ("efSearch", dense.ef_construction),
    }
    for flag, (name, value) in checks.items():
        if value is not None and not has_parameter(index, name):
            raise RetrieverError(f"{flag} does not apply to --index-type {dense.index_type}")


def _parsed_index_type(dense: DenseSpec, dim: int | None) -> Any:
    """An empty FAISS index of the spec's type and storage, as the build makes it; None
    for a Milvus index name that FAISS does not know (:func:`check_dense_spec` checked it)."""
    from retriever.parts.dense.codes import binary_bits, layout_of
    from retriever.parts.dense.faiss_index import factory_index
    from retriever.parts.dense.faiss_install import faiss

    if dense.backend != "faiss":
        try:
            return faiss.index_factory(64, dense.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError:
            return None
    layout = layout_of(dense.index_type, dense.storage, dense.rabitq_bits)
    reason = ""
    for trial in _TRIAL_DIMS if dim is None else (dim,):
        width = binary_bits(trial) if layout.binary else trial
        try:
            return factory_index(width, layout.factory)
        except RuntimeError as exc:
            reason = reason or _faiss_reason(exc)
    where = f" at dimension {dim}" if dim is not None else ""
    raise RetrieverError(
        f"invalid --index-type {dense.index_type!r}{where}: {reason}; give Flat, HNSWm, IVFn "
        "or a faiss.index_factory string"
    )


def _faiss_reason(exc: RuntimeError) -> str:
    """FAISS's own words, without the C++ function and source line it prefixes them with."""
    text = (str(exc).strip().splitlines() or ["unknown index type"])[-1]
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return re.sub(r"^Error: '.*?' failed: ", "", text)
