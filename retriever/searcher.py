"""Load an index folder and answer queries with the same model and filter that built it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retriever.config import MANIFEST_VERSION, EncoderConfig
from retriever.docstore import DOCSTORE_DIR, DocStore
from retriever.embedfilter import EmbedFilter
from retriever.encoder import Encoder
from retriever.errors import RetrieverError
from retriever.index import load_faiss_index, search_faiss_index
from retriever.indexing import MANIFEST_FILE, MANIFEST_FORMAT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, its score (cosine), title and text."""

    id: str
    score: float
    title: str
    text: str
    row: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "title": self.title, "text": self.text}


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise RetrieverError(
            f"{folder} is not a retriever index (no {MANIFEST_FILE}); build one with "
            "`retriever index DATASET --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RetrieverError(f"{path} is not a retriever index manifest")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise RetrieverError(
            f"{folder} was written with manifest version {manifest.get('manifest_version')}, "
            f"this retriever reads version {MANIFEST_VERSION}: rebuild the index"
        )
    return manifest


def check_encoder_matches(manifest: dict[str, Any], encoder: Encoder, folder: Path) -> None:
    """Refuse an encoder whose weights differ from those the index was built with."""
    built_with = manifest["model"]
    if encoder.resolved.weights_sha256 != built_with["weights_sha256"]:
        raise RetrieverError(
            f"{folder} was built with model {built_with['name']!r} (weights sha256 "
            f"{built_with['weights_sha256'][:12]}...), but {encoder.resolved.name!r} has "
            f"weights {encoder.resolved.weights_sha256[:12]}...: its embeddings would not be "
            "comparable. Search with the model that built the index, or rebuild it"
        )
    if encoder.hidden_size != manifest["filter"]["model_dim"]:
        raise RetrieverError(
            f"{folder} expects hidden size {manifest['filter']['model_dim']}, the model has "
            f"{encoder.hidden_size}"
        )


class Searcher:
    """Searches one index folder. Build it with :meth:`Searcher.load`."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        encoder: Encoder,
        embed_filter: EmbedFilter,
        index: Any,
        docstore: DocStore,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.encoder = encoder
        self.filter = embed_filter
        self.index = index
        self.docstore = docstore

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 32,
        use_gpu: bool | None = None,
    ) -> Searcher:
        """Open an index folder and load the model named in its manifest (or ``model``).

        The model's weights must hash to the manifest's ``weights_sha256``.
        """
        folder = Path(path).expanduser().resolve()
        manifest = read_manifest(folder)
        built_with = manifest["model"]
        encoder = Encoder.load(
            model or built_with["name"],
            EncoderConfig.from_dict(manifest["encoder"]),
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            revision=built_with.get("revision") if model is None else None,
        )
        check_encoder_matches(manifest, encoder, folder)
        embed_filter = EmbedFilter.load(folder)
        index = load_faiss_index(folder, use_gpu=use_gpu)
        docstore = DocStore.open(folder / DOCSTORE_DIR)
        expected = manifest["index"]["count"]
        if index.ntotal != expected or len(docstore) != expected:
            raise RetrieverError(
                f"{folder} is inconsistent: manifest counts {expected} documents, the FAISS "
                f"index holds {index.ntotal} and the docstore {len(docstore)}; rebuild it"
            )
        return cls(folder, manifest, encoder, embed_filter, index, docstore)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Filtered, normalised query vectors, exactly as the index's documents were made."""
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise RetrieverError("empty query: give some text to search for")
        return self.filter.transform(self.encoder.encode_queries(list(queries)))

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first."""
        return self._hits(self.embed_queries([query]), k)[0]

    def batch_search(
        self, queries: Mapping[str, str] | Sequence[str], k: int = 10
    ) -> dict[str, dict[str, float]]:
        """BEIR-style ``{query_id: {doc_id: score}}``; a list is keyed by its positions."""
        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        ids = list(queries)
        hits = self._hits(self.embed_queries([queries[q] for q in ids]), k)
        return {
            qid: {hit.id: hit.score for hit in found} for qid, found in zip(ids, hits, strict=True)
        }

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search alone: ``(scores, rows)`` for already embedded queries."""
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        return search_faiss_index(self.index, vectors, min(k, len(self)))

    def _hits(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        scores, rows = self.search_vectors(vectors, k)
        results = []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            keep = query_rows >= 0
            documents = self.docstore.get_many(query_rows[keep].tolist())
            results.append(
                [
                    Hit(doc.id, float(score), doc.title, doc.text, int(row), doc.metadata)
                    for doc, score, row in zip(
                        documents, query_scores[keep], query_rows[keep], strict=True
                    )
                ]
            )
        return results

    def close(self) -> None:
        self.docstore.close()
