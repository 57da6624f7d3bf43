"""BM25 over the documents' words (the ``bm25s`` library): the lexical reference row.

English stopwords removed and Snowball-stemmed (PyStemmer), Lucene's BM25 variant with
bm25s's defaults; the same text the encoder sees (``title + " " + text``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError

BM25_DIR = "bm25"
KEYS_FILE = "keys.npy"
STEMMER_LANGUAGE = "english"
STOPWORDS = "en"


# Held while a BM25 index is built: ~36 bytes per token (a Python int in a list) plus the
# per-document list; checked against free memory so a build refuses before it swaps.
_BYTES_PER_TOKEN = 40
_BYTES_PER_DOCUMENT = 120


@functools.lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer(STEMMER_LANGUAGE)


def _tokenize(texts: Sequence[str], *, return_ids: bool = True) -> Any:
    import bm25s

    return bm25s.tokenize(
        list(texts),
        stopwords=STOPWORDS,
        stemmer=_stemmer(),
        return_ids=return_ids,
        show_progress=False,
    )


class BM25Index:
    """A bm25s index of one collection, with the document key of each of its rows."""

    def __init__(self, model: Any, keys: np.ndarray) -> None:
        self.model = model
        self.keys = np.asarray(keys, dtype=np.int64)
        if len(self.keys) != self.num_documents:
            raise RetrieverError(
                f"the BM25 index has {self.num_documents} documents but {len(self.keys)} keys; "
                "rebuild the index"
            )

    @classmethod
    def build(cls, texts: Sequence[str], keys: np.ndarray | None = None) -> BM25Index:
        """Index texts held in memory (keys ``0..n-1`` unless given)."""
        builder = BM25Builder()
        builder.add(np.arange(len(texts)) if keys is None else keys, texts)
        return builder.finish()

    @property
    def num_documents(self) -> int:
        return int(self.model.scores["num_docs"])

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, keys)``, each ``(n, k)``, best first; -1 pads documents scoring 0."""
        k = min(k, self.num_documents)
        rows, scores = self.model.retrieve(
            _tokenize(queries), k=k, show_progress=False, n_threads=1
        )
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        # bm25s fills the list with zero-score documents; those share no word with the query.
        unmatched = scores <= 0
        keys = self.keys[rows]
        keys[unmatched] = -1
        scores[unmatched] = -np.inf
        return scores, keys

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.model.save(str(folder), show_progress=False)
        np.save(folder / KEYS_FILE, self.keys, allow_pickle=False)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        import bm25s

        try:
            model = bm25s.BM25.load(str(folder), show_progress=False)
            keys = np.load(Path(folder) / KEYS_FILE, allow_pickle=False)
        except (OSError, ValueError, KeyError) as exc:
            raise RetrieverError(f"cannot read the BM25 index in {folder}: {exc}") from None
        return cls(model, keys)


class BM25Builder:
    """Tokenises documents chunk by chunk into one vocabulary, then indexes them.

    BM25's statistics (document frequencies, average length) cover the whole collection,
    so the token ids of every document are held until :meth:`finish`: about 40 bytes per
    token. A build that would not fit in the memory free now stops with a clear error.
    """

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.token_ids: list[list[int]] = []
        self.keys: list[np.ndarray] = []
        self.tokens = 0

    def add(self, keys: np.ndarray, texts: Sequence[str]) -> None:
        vocabulary = self.vocabulary
        for words in _tokenize(texts, return_ids=False):
            self.token_ids.append([vocabulary.setdefault(w, len(vocabulary)) for w in words])
            self.tokens += len(words)
        self.keys.append(np.asarray(keys, dtype=np.int64))
        self._check_memory()

    def _check_memory(self) -> None:
        import psutil

        held = self.tokens * _BYTES_PER_TOKEN + len(self.token_ids) * _BYTES_PER_DOCUMENT
        # Indexing builds score matrices about as large again as the token ids.
        if 2 * held > psutil.virtual_memory().available:
            raise RetrieverError(
                f"the BM25 index needs more memory than is free: {len(self.token_ids)} documents "
                f"so far hold {self.tokens} tokens (~{held / 2**30:.1f} GiB at "
                f"~{_BYTES_PER_TOKEN} bytes per token, as much again to index them); build "
                "without --bm25, or on a machine with more memory"
            )

    def finish(self) -> BM25Index:
        import bm25s

        if not self.token_ids:
            raise RetrieverError("cannot build BM25 over an empty collection")
        model = bm25s.BM25()
        model.index((self.token_ids, self.vocabulary), show_progress=False)
        return BM25Index(model, np.concatenate(self.keys))
