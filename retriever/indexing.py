"""Corpus -> encoder -> EmbedFilter -> FAISS index (+ key-token sparse index, BM25) +
LMDB docstore -> manifest.

An index is built in a hidden staging folder beside its destination and renamed into
place only once every file, the manifest last, is written: an interrupted or failed
build leaves nothing that loads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from retriever.config import MANIFEST_VERSION, PROMPTS, EncoderConfig, FilterSpec, SparseSpec
from retriever.datasets import Corpus, load_corpus
from retriever.docstore import DOCSTORE_DIR, DocStore
from retriever.embedfilter import EmbedFilter
from retriever.encoder import Encoder
from retriever.errors import RetrieverError
from retriever.index import INDEX_FILE, METRIC, build_faiss_index, gpu_count, save_faiss_index
from retriever.lens import TokenLens
from retriever.lexical import BM25_DIR, STEMMER_LANGUAGE, STOPWORDS, BM25Index
from retriever.models import DEFAULT_MODEL
from retriever.sparse import SPARSE_DIR, KeyTokenIndex

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "retriever-index"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in (
        "retriever",
        "torch",
        "transformers",
        "faiss-cpu",
        "faiss-gpu",
        "numpy",
        "lmdb",
        "scipy",
        "bm25s",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not (out / MANIFEST_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise RetrieverError(f"{out} exists and is not a retriever index; choose another --out")
    if (out / MANIFEST_FILE).is_file() and not overwrite:
        raise RetrieverError(f"{out} already holds an index; pass --overwrite to replace it")


class Indexer:
    """Builds index folders from corpora with one encoder and one filter spec."""

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
    ) -> None:
        if not (dense or sparse or bm25):
            raise RetrieverError("--no-dense leaves nothing to search: add --sparse and/or --bm25")
        self.encoder = encoder
        self.filter_spec = filter_spec or FilterSpec()
        self.index_type = index_type
        self.use_gpu = use_gpu
        self.dense = dense
        self.sparse = sparse
        self.bm25 = bm25

    def build(self, corpus: Corpus, out: str | Path, *, overwrite: bool = False) -> Path:
        """Encode, filter and index ``corpus`` into the folder ``out``; returns its path."""
        out = Path(out).expanduser().resolve()
        _check_destination(out, overwrite)
        started = time.perf_counter()
        unembedding = self.encoder.unembedding()
        embed_filter = EmbedFilter.from_unembedding(unembedding, self.filter_spec)
        logger.info(
            "EmbedFilter %s: %d -> %d dimensions",
            self.filter_spec.band
            if self.filter_spec.start is None
            else f"start={self.filter_spec.start}",
            embed_filter.model_dim,
            embed_filter.dim,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            timings: dict[str, float] = {}
            mark = time.perf_counter()
            embeddings = self.encoder.encode_documents([d.embedding_text for d in corpus.documents])
            timings["encode"] = time.perf_counter() - mark

            mark = time.perf_counter()
            vectors = embed_filter.transform(embeddings)
            embed_filter.save(staging)
            count = len(vectors)
            if self.dense:
                index = build_faiss_index(vectors, self.index_type, use_gpu=self.use_gpu)
                save_faiss_index(index, staging)
                count = index.ntotal
                timings["index"] = time.perf_counter() - mark

            if self.sparse is not None:
                mark = time.perf_counter()
                lens = TokenLens(unembedding, embed_filter, self.encoder.tokenizer)
                KeyTokenIndex.build(
                    lens, lens.vectors(embeddings, self.sparse.space), self.sparse
                ).save(staging / SPARSE_DIR)
                timings["sparse"] = time.perf_counter() - mark

            if self.bm25:
                mark = time.perf_counter()
                BM25Index.build([d.embedding_text for d in corpus.documents]).save(
                    staging / BM25_DIR
                )
                timings["bm25"] = time.perf_counter() - mark

            mark = time.perf_counter()
            DocStore.write(staging / DOCSTORE_DIR, corpus.documents)
            timings["docstore"] = time.perf_counter() - mark
            timings["total"] = time.perf_counter() - started

            manifest = self._manifest(corpus, embed_filter, count, timings, staging)
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            _move_into_place(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("index of %d documents written to %s", len(corpus), out)
        return out

    def _manifest(
        self,
        corpus: Corpus,
        embed_filter: EmbedFilter,
        count: int,
        timings: dict[str, float],
        staging: Path,
    ) -> dict[str, Any]:
        config = self.encoder.config
        sizes = {
            part: folder_bytes(staging / name)
            for part, name in (
                ("index", INDEX_FILE),
                ("sparse", SPARSE_DIR),
                ("bm25", BM25_DIR),
                ("docstore", DOCSTORE_DIR),
                ("filter", "filter.npy"),
            )
            if (staging / name).exists()
        }
        sizes["total"] = folder_bytes(staging)
        return {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "model": self.encoder.describe(),
            "encoder": {**config.to_dict(), "prompt_template": PROMPTS[config.prompt]},
            "filter": embed_filter.describe(),
            "index": {
                "type": self.index_type,
                "metric": METRIC,
                "normalized": True,
                "dim": embed_filter.dim,
                "count": int(count),
            }
            if self.dense
            else None,
            "sparse": {**self.sparse.to_dict(), "count": int(count)} if self.sparse else None,
            "bm25": {"stemmer": STEMMER_LANGUAGE, "stopwords": STOPWORDS, "count": int(count)}
            if self.bm25
            else None,
            "documents": {
                "source": str(corpus.source),
                "sha256": corpus.sha256,
                "count": len(corpus),
                "skipped_empty": len(corpus.skipped_empty),
                "skipped_empty_ids": corpus.skipped_empty[:100],
            },
            "versions": library_versions(),
            "build": {
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": {k: round(v, 3) for k, v in timings.items()},
                "bytes": sizes,
                "faiss_gpus": gpu_count(),
            },
        }


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.replace(staging, out)
        return
    # Replacing an index: swap it aside first so that `out` is never half-written.
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, retired / out.name)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def build_index(
    dataset: str | Path,
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
    overwrite: bool = False,
) -> Path:
    """Build an index of a BEIR folder or JSONL file; returns its folder.

    It holds the filtered dense FAISS index (unless ``dense=False``), plus the key-token
    sparse index with ``sparse`` and a BM25 index with ``bm25=True``.
    """
    out_path = Path(out).expanduser().resolve()
    # Cheap checks first: a bad destination or corpus fails before the model loads.
    _check_destination(out_path, overwrite)
    if not (dense or sparse or bm25):
        raise RetrieverError("--no-dense leaves nothing to search: add --sparse and/or --bm25")
    corpus = load_corpus(dataset, limit=limit)
    encoder = Encoder.load(
        model,
        encoder_config,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        revision=revision,
        unembedding_from=unembedding_from,
    )
    indexer = Indexer(
        encoder,
        filter_spec,
        index_type=index_type,
        use_gpu=use_gpu,
        dense=dense,
        sparse=sparse,
        bm25=bm25,
    )
    return indexer.build(corpus, out_path, overwrite=overwrite)
