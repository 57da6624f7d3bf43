"""Grow and shrink an index: add (or upsert) documents, delete documents by id.

Each change writes a new generation (:mod:`retriever.core.generations`) from a copy of the
current one, under the index path's writer lock, and is published in one atomic swap
like a build. An add encodes its documents through the embedding store with the index's
own model and settings, so a crashed add resumes; a delete needs no model.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retriever.core.config import EncoderConfig
from retriever.core.errors import RetrieverError
from retriever.core.generations import current_generation, new_generation, writer_lock
from retriever.data.datasets import Document, iter_documents, scan_corpus
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.index.assembly import (
    IndexPlan,
    PartsWriter,
    batched,
    index_manifest,
    plan_of,
    shard_batches,
    token_lens,
    write_manifest,
)
from retriever.index.manifest import read_manifest
from retriever.parts.dense.backends import EXTERNAL_PARTS
from retriever.parts.docstore import (
    DOCSTORE_DIR,
    DocStore,
    combine_digests,
    content_digest,
    shown_ids,
)
from retriever.store.embeddings import DEFAULT_CHUNK_SIZE, DEFAULT_STORE_PRECISION, EmbeddingStore
from retriever.store.encoding import encode_corpus

logger = logging.getLogger(__name__)


def add_documents(
    encoder: Encoder,
    index: str | Path,
    dataset: str | Path,
    *,
    upsert: bool = False,
    limit: int | None = None,
    store: str | Path | None = None,
    chunk_size: int | None = None,
    store_precision: str = DEFAULT_STORE_PRECISION,
    use_gpu: bool | None = None,
) -> dict[str, int]:
    """Append a corpus's documents to the index path ``index`` in a new generation.

    Ids already in the index are refused, or replaced with ``upsert=True``; returns
    ``{"added": n, "replaced": m}``. ``encoder`` must hold the index's model; it takes the
    index's encoding settings.
    """
    out, base, manifest = _open_for_change(index)
    _adopt_encoding(encoder, manifest, base)
    scan = scan_corpus(dataset, limit)
    with DocStore.open(base / DOCSTORE_DIR) as existing:
        present = _present_ids(existing, iter_documents(scan))
    if present and not upsert:
        raise RetrieverError(
            f"{len(present)} of the documents are already in {out} ({shown_ids(present)}); "
            "pass --upsert to replace them, or remove them from the file"
        )
    with writer_lock(out):
        embeddings = encode_corpus(
            encoder, scan, folder=store, chunk_size=chunk_size, precision=store_precision
        )
        started = time.perf_counter()
        base, manifest = _same_generation(out, base)
        with new_generation(out, external=EXTERNAL_PARTS) as staging:
            plan = plan_of(manifest, use_gpu=use_gpu)
            writer, counts = _write_added(
                encoder, plan, staging, base, manifest, embeddings, present
            )
            entry = {
                "op": "upsert" if upsert else "add",
                "source": str(scan.source),
                "sha256": scan.sha256,
                "count": scan.count,
                "replaced": len(present),
            }
            updated = _manifest_after_add(encoder, plan, staging, manifest, writer, counts, entry)
            updated["build"]["seconds"]["total"] = round(time.perf_counter() - started, 3)
            write_manifest(staging, updated)
    logger.info("added %d documents to %s (%d replaced)", writer.added, out, len(present))
    return {"added": writer.added - len(present), "replaced": len(present)}


def _adopt_encoding(encoder: Encoder, manifest: dict[str, Any], base: Path) -> None:
    """Refuse an encoder that differs from the index's model; give it the index's settings."""
    if encoder.resolved.weights_sha256 != manifest["model"]["weights_sha256"]:
        raise RetrieverError(f"{base} was built with other model weights than this encoder's")
    encoder.config = EncoderConfig.from_dict(manifest["encoder"])


def _write_added(
    encoder: Encoder,
    plan: IndexPlan,
    staging: Path,
    base: Path,
    manifest: dict[str, Any],
    embeddings: EmbeddingStore,
    replaced: list[str],
) -> tuple[PartsWriter, dict[str, int]]:
    """Write the base generation's parts with ``replaced`` removed and the store added;
    returns the writer and each part's document count."""
    embed_filter = EmbedFilter.load(base)
    lens = token_lens(encoder, plan, embed_filter)
    writer = PartsWriter(staging, plan, embed_filter, lens, base, manifest["index"])
    writer.delete(replaced)
    next_key = manifest["documents"]["next_key"]
    for keys, raw, documents in shard_batches(
        embeddings.shards(), encoder.config.pooling, next_key
    ):
        writer.add(keys, raw, documents)
    counts = writer.finish()
    embed_filter.save(staging)
    return writer, counts


def _manifest_after_add(
    encoder: Encoder,
    plan: IndexPlan,
    staging: Path,
    manifest: dict[str, Any],
    writer: PartsWriter,
    counts: dict[str, int],
    entry: dict[str, Any],
) -> dict[str, Any]:
    """The new generation's manifest: the base's model, store and history, plus ``entry``."""
    removed_digest = content_digest(document for _, document in writer.removed)
    digest = combine_digests(
        int(manifest["documents"]["content_sha256"], 16), writer.added_digest, removed_digest
    )
    updated = index_manifest(
        encoder,
        plan,
        writer.filter,
        writer,
        counts,
        next_key=manifest["documents"]["next_key"] + writer.added,
        digest=digest,
        history=[*manifest["documents"].get("history", []), entry],
        timings=writer.timings,
        staging=staging,
        store=None,
    )
    updated["model"] = manifest["model"]
    updated["store"] = manifest.get("store")
    return updated


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
        raise RetrieverError(
            f"{out} holds no document with id {shown_ids(unknown)}; nothing was deleted"
        )
    started = time.perf_counter()
    with writer_lock(out):
        base, manifest = _same_generation(out, base)
        plan = plan_of(manifest, use_gpu=use_gpu)
        embed_filter = EmbedFilter.load(base)
        with new_generation(out, external=EXTERNAL_PARTS) as staging:
            writer = PartsWriter(staging, plan, embed_filter, None, base, manifest["index"])
            writer.delete(doc_ids)
            counts = writer.finish()
            embed_filter.save(staging)
            updated = _manifest_after_delete(manifest, writer, counts["docstore"])
            updated["build"]["generation"] = staging.name.removesuffix(".partial")
            updated["build"]["seconds"] = {"total": round(time.perf_counter() - started, 3)}
            write_manifest(staging, updated)
    logger.info("deleted %d documents from %s", len(writer.removed), out)
    return len(writer.removed)


def _manifest_after_delete(
    manifest: dict[str, Any], writer: PartsWriter, count: int
) -> dict[str, Any]:
    """The base generation's manifest, less the documents ``writer`` removed."""
    updated = json.loads(json.dumps(manifest))
    documents = updated["documents"]
    documents["count"] = count
    removed_digest = content_digest(document for _, document in writer.removed)
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
            updated[part]["count"] = count
    if updated.get("index"):
        # A server backend's generation has its own collection.
        updated["index"]["backend"] = writer.backend_description
    return updated


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
    for batch in batched(documents, DEFAULT_CHUNK_SIZE):
        present += list(docstore.keys_of(d.id for d in batch))
    return present
