"""BM25 over the documents' words (the ``bm25s`` library): the lexical reference row.

English stopwords removed and Snowball-stemmed (PyStemmer), Lucene's BM25 variant with
bm25s's defaults; the same text the encoder sees (``title + " " + text``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError

BM25_DIR = "bm25"
KEYS_FILE = "keys.npy"
STEMMER_LANGUAGE = "english"
STOPWORDS = "en"
# bm25s.tokenize's default word pattern.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"


# Held while a BM25 index is built: ~36 bytes per token (a Python int in a list) plus the
# per-document list; checked against free memory so a build refuses before it swaps.
_BYTES_PER_TOKEN = 40
_BYTES_PER_DOCUMENT = 120


class Analyzer:
    """Text -> stemmed words exactly as ``bm25s.tokenize`` makes them (lower-cased words of
    two or more word characters, English stopwords removed, Snowball stems), with the
    stemmer, stopword set and pattern built once instead of on every call.

    PyStemmer's stemmers are not thread-safe: each thread gets its own, built on its first
    use.
    """

    def __init__(self) -> None:
        from bm25s.stopwords import STOPWORDS_EN  # the list bm25s's STOPWORDS ("en") names

        self._stopwords = frozenset(STOPWORDS_EN)
        self._split = re.compile(TOKEN_PATTERN).findall
        self._local = threading.local()

    def _stemmer(self) -> Any:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            import Stemmer

            stemmer = self._local.stemmer = Stemmer.Stemmer(STEMMER_LANGUAGE)
        return stemmer

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's stemmed words, in order."""
        stopwords = self._stopwords
        words = [[w for w in self._split(text.lower()) if w not in stopwords] for text in texts]
        # Each distinct word stemmed once, as bm25s does.
        distinct = list(dict.fromkeys(w for text_words in words for w in text_words))
        stems = dict(zip(distinct, self._stemmer().stemWords(distinct), strict=True))
        return [[stems[w] for w in text_words] for text_words in words]


class BM25Index:
    """A bm25s index of one collection, with the document key of each of its rows.

    An index whose every document was deleted has no bm25s model (bm25s cannot index
    nothing): it holds no keys, saves only its empty key file and finds no hits.
    """

    def __init__(self, model: Any, keys: np.ndarray) -> None:
        self.model = model
        self.keys = np.asarray(keys, dtype=np.int64)
        self.analyzer = Analyzer()
        if len(self.keys) != self.num_documents:
            raise RetrieverError(
                f"the BM25 index has {self.num_documents} documents but {len(self.keys)} keys; "
                "rebuild the index"
            )

    @classmethod
    def build(cls, texts: Sequence[str], keys: np.ndarray | None = None) -> BM25Index:
        """Index texts held in memory (keys ``0..n-1`` unless given)."""
        if not len(texts):
            # A first build of nothing is a mistake; only a delete may empty an index.
            raise RetrieverError("cannot build BM25 over an empty collection")
        builder = BM25Builder()
        builder.add(np.arange(len(texts)) if keys is None else keys, texts)
        return builder.finish()

    @property
    def num_documents(self) -> int:
        if self.model is None:
            return 0
        return int(self.model.scores["num_docs"])

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, keys)``, each ``(n, k)``, best first; -1 pads documents scoring 0."""
        k = min(k, self.num_documents)
        if k < 1:  # an emptied index (bm25s refuses k=0): every query finds nothing
            return (
                np.full((len(queries), 0), -np.inf, dtype=np.float32),
                np.full((len(queries), 0), -1, dtype=np.int64),
            )
        # n_threads=0 scores in this thread: bm25s starts a thread pool for any other value.
        rows, scores = self.model.retrieve(
            self.analyzer(queries), k=k, show_progress=False, n_threads=0
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
        if self.model is None:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            self.model.save(str(folder), show_progress=False)
        np.save(folder / KEYS_FILE, self.keys, allow_pickle=False)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        bm25s = _bm25s()

        try:
            keys = np.load(Path(folder) / KEYS_FILE, allow_pickle=False)
            # No keys: an emptied index, saved without a bm25s model (see the class).
            model = bm25s.BM25.load(str(folder), show_progress=False) if len(keys) else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
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
        self.analyzer = Analyzer()

    def add(self, keys: np.ndarray, texts: Sequence[str]) -> None:
        vocabulary = self.vocabulary
        for words in self.analyzer(texts):
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
        bm25s = _bm25s()

        if not self.token_ids:
            # Every document was deleted: an empty index, which searches to no hits.
            return BM25Index(None, np.empty(0, dtype=np.int64))
        model = bm25s.BM25()
        model.index((self.token_ids, self.vocabulary), show_progress=False)
        return BM25Index(model, np.concatenate(self.keys))


def _bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG on import, so its "Building index from IDs" line
    # would reach whatever handler the application has (ours prints it as a [retriever]
    # line); its warnings still come through.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s
