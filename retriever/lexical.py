"""BM25 over the documents' words (the ``bm25s`` library): the lexical reference row.

English stopwords removed and Snowball-stemmed (PyStemmer), Lucene's BM25 variant with
bm25s's defaults; the same text the encoder sees (``title + " " + text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError

BM25_DIR = "bm25"
STEMMER_LANGUAGE = "english"
STOPWORDS = "en"


def _tokenize(texts: Sequence[str]) -> Any:
    import bm25s
    import Stemmer

    return bm25s.tokenize(
        list(texts),
        stopwords=STOPWORDS,
        stemmer=Stemmer.Stemmer(STEMMER_LANGUAGE),
        show_progress=False,
    )


class BM25Index:
    """A bm25s index of one collection; rows are the documents' positions in it."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Index:
        import bm25s

        if not texts:
            raise RetrieverError("cannot build BM25 over an empty collection")
        model = bm25s.BM25()
        model.index(_tokenize(texts), show_progress=False)
        return cls(model)

    @property
    def num_documents(self) -> int:
        return int(self.model.scores["num_docs"])

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(n, k)``, best first; -1 pads documents scoring 0."""
        k = min(k, self.num_documents)
        rows, scores = self.model.retrieve(
            _tokenize(queries), k=k, show_progress=False, n_threads=1
        )
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        # bm25s fills the list with zero-score documents; those share no word with the query.
        unmatched = scores <= 0
        rows[unmatched] = -1
        scores[unmatched] = -np.inf
        return scores, rows

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.model.save(str(folder), show_progress=False)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        import bm25s

        try:
            model = bm25s.BM25.load(str(folder), show_progress=False)
        except (OSError, ValueError) as exc:
            raise RetrieverError(f"cannot read the BM25 index in {folder}: {exc}") from exc
        return cls(model)
