"""Grow and shrink an index: add (or upsert) documents, delete documents by id.

Each change writes a new generation (:mod:`retriever.core.generations`) from a copy of the
current one, under the index path's writer lock, and is published in one atomic swap
like a build. An add encodes its documents through the embedding store with the index's
own model and settings, so a crashed add resumes; a delete needs no model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.generations import (
    current_generation,
    new_generation,
    not_an_index,
    writer_lock,
)
from retriever.data.datasets import CorpusScan, Document, iter_documents, scan_corpus
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.index.assembly import (
    PartsWriter,
    batched,
    index_manifest,
    publish_manifest,
    shard_batches,
    token_lens,
)
from retriever.index.integrity import check_files_at_load
from retriever.index.manifest import MANIFEST_FILE, Manifest, load_encoder_for, read_manifest
from retriever.index.options import BuildOptions
from retriever.parts.dense.backends import EXTERNAL_PARTS
from retriever.parts.dense.gpu import GpuSetting
from retriever.parts.docstore import (
    DOCSTORE_DIR,
    DocStore,
    combine_digests,
    content_digest,
    shown_ids,
)
from retriever.store.embeddings import DEFAULT_CHUNK_SIZE, EmbeddingStore
from retriever.store.encoding import encode_corpus

logger = logging.getLogger(__name__)


def add_documents(
    index: str | Path,
    dataset: str | Path,
    *,
    upsert: bool = False,
    options: BuildOptions | None = None,
    encoder: Encoder | None = None,
    model: str | None = None,
    dtype: str | None = None,
) -> dict[str, int]:
    """Append a corpus's documents to the index path ``index`` in a new generation.

    Ids already in the index are refused, or replaced with ``upsert=True``; returns
    ``{"added": n, "replaced": m}``. The documents are encoded by ``encoder`` (it must
    hold the index's model; it takes the index's encoding settings), else by the index's
    model, loaded from ``model`` (a local copy of the same weights) at ``dtype`` when
    given. Everything is checked before the model loads: the index, the corpus and its ids.
    """
    options = options or BuildOptions()
    scan = scan_corpus(dataset, options.limit)
    out, manifest = _open_for_change(index)
    present = _checked_ids(out, manifest, scan, upsert)
    with writer_lock(out):  # taken before the model loads: a second writer fails at once
        if encoder is None:
            encoder = load_encoder_for(
                manifest,
                manifest.folder,
                model=model,
                dtype=dtype,
                device=options.device,
                batch_size=options.batch_size,
            )
        _adopt_encoding(encoder, manifest)
        embeddings = encode_corpus(
            encoder,
            scan,
            folder=options.store,
            chunk_size=options.chunk_size,
            precision=options.store_precision,
        )
        started = time.perf_counter()
        manifest = _same_generation(out, manifest)
        with new_generation(out, external=EXTERNAL_PARTS) as staging:
            writer, counts = _write_added(
                encoder, manifest, staging, embeddings, present, options.use_gpu
            )
            entry = {
                "op": "upsert" if upsert else "add",
                "source": str(scan.source),
                "sha256": scan.sha256,
                "count": scan.count,
                "replaced": len(present),
            }
            updated = _manifest_after(manifest, writer, counts, entry)
            updated.build["seconds"]["total"] = round(time.perf_counter() - started, 3)
            publish_manifest(staging, updated)
    logger.info("added %d documents to %s (%d replaced)", writer.added, out, len(present))
    return {"added": writer.added - len(present), "replaced": len(present)}


def _checked_ids(out: Path, manifest: Manifest, scan: CorpusScan, upsert: bool) -> list[str]:
    """The corpus's ids the index already holds; refused unless ``upsert``."""
    with DocStore.open(manifest.folder / DOCSTORE_DIR) as existing:
        present = _present_ids(existing, iter_documents(scan))
    if present and not upsert:
        raise RetrieverError(
            f"{len(present)} of the documents are already in {out} ({shown_ids(present)}); "
            "pass --upsert to replace them, or remove them from the file"
        )
    return present


def _adopt_encoding(encoder: Encoder, manifest: Manifest) -> None:
    """Refuse an encoder that differs from the index's model; give it the index's settings."""
    if encoder.resolved.weights_sha256 != manifest.weights_sha256:
        raise RetrieverError(
            f"{manifest.folder} was built with other model weights than this encoder's"
        )
    encoder.config = manifest.spec.encoder


def _write_added(
    encoder: Encoder,
    manifest: Manifest,
    staging: Path,
    embeddings: EmbeddingStore,
    replaced: list[str],
    use_gpu: GpuSetting,
) -> tuple[PartsWriter, dict[str, int]]:
    """Write the base generation's parts with ``replaced`` removed and the store added;
    returns the writer and each part's document count."""
    embed_filter = EmbedFilter.load(manifest.folder)
    lens = token_lens(encoder, manifest.spec, embed_filter)
    writer = PartsWriter(staging, manifest.spec, embed_filter, lens, base=manifest, use_gpu=use_gpu)
    writer.delete(replaced)
    for keys, raw, documents in shard_batches(
        embeddings.shards(), encoder.config.pooling, manifest.next_key
    ):
        writer.add(keys, raw, documents)
    counts = writer.finish()
    embed_filter.save(staging)
    return writer, counts


def _manifest_after(
    manifest: Manifest,
    writer: PartsWriter,
    counts: dict[str, int],
    entry: dict[str, Any],
) -> Manifest:
    """The new generation's manifest: the base's spec, model, store and history, plus
    ``entry``."""
    removed_digest = content_digest(document for _, document in writer.removed)
    digest = combine_digests(manifest.content_digest, writer.added_digest, removed_digest)
    documents = {
        "next_key": manifest.next_key + writer.added,
        "content_sha256": f"{digest:064x}",
        "history": [*manifest.history, entry],
    }
    updated = index_manifest(
        manifest.spec,
        manifest.model,
        writer.filter,
        writer,
        counts,
        documents,
        timings=writer.timings,
        store=manifest.store,
    )
    return updated


def delete_documents(
    index: str | Path, doc_ids: Iterable[str], *, use_gpu: GpuSetting = None
) -> int:
    """Remove documents by id from every part of the index path ``index``, in a new
    generation; returns how many were removed. Ids the index does not hold are refused.

    Needs no model: vectors are removed by key, and BM25 is rebuilt from the docstore.
    """
    doc_ids = list(dict.fromkeys(str(i) for i in doc_ids))
    if not doc_ids:
        raise RetrieverError("no document ids to delete: give ids or --ids-file")
    out, manifest = _open_for_change(index)
    with DocStore.open(manifest.folder / DOCSTORE_DIR) as existing:
        found = existing.keys_of(doc_ids)
    unknown = [i for i in doc_ids if i not in found]
    if unknown:
        raise RetrieverError(
            f"{out} holds no document with id {shown_ids(unknown)}; nothing was deleted"
        )
    started = time.perf_counter()
    with writer_lock(out):
        manifest = _same_generation(out, manifest)
        embed_filter = EmbedFilter.load(manifest.folder)
        with new_generation(out, external=EXTERNAL_PARTS) as staging:
            writer = PartsWriter(
                staging, manifest.spec, embed_filter, None, base=manifest, use_gpu=use_gpu
            )
            writer.delete(doc_ids)
            counts = writer.finish()
            embed_filter.save(staging)
            entry = {"op": "delete", "count": len(writer.removed)}
            updated = _manifest_after(manifest, writer, counts, entry)
            updated.build["seconds"] = {"total": round(time.perf_counter() - started, 3)}
            publish_manifest(staging, updated)
    logger.info("deleted %d documents from %s", len(writer.removed), out)
    return len(writer.removed)


def _open_for_change(index: str | Path) -> tuple[Path, Manifest]:
    out = Path(index).expanduser().absolute()
    base = current_generation(out)
    if base is None or not (base / MANIFEST_FILE).is_file():
        raise not_an_index(out)
    manifest = read_manifest(base)
    check_files_at_load(base, manifest)
    return out, manifest


def _same_generation(out: Path, manifest: Manifest) -> Manifest:
    """Under the lock: the generation the change was prepared against must still be
    current (another writer may have published meanwhile); its manifest, read again."""
    if current_generation(out) != manifest.folder:
        raise RetrieverError(
            f"{out} changed while this command prepared its change (another writer "
            "published a new generation); run the command again"
        )
    return read_manifest(manifest.folder)


def _present_ids(docstore: DocStore, documents: Iterable[Document]) -> list[str]:
    present: list[str] = []
    for batch in batched(documents, DEFAULT_CHUNK_SIZE):
        present += list(docstore.keys_of(d.id for d in batch))
    return present
