"""The one result type of every search: per query, document ids, keys and scores.

``Searcher.search`` returns one :class:`Ranking`, ``Searcher.batch_search`` (and the
benchmark, and ``retriever eval``) a :class:`Results` of many. A ranking holds only ids,
keys and scores; its :class:`Hit` records (title, text, metadata) are read from the
docstore when first asked for, so a run of thousands of queries decodes no document.
``Results.to_beir()`` is the BEIR ``{query_id: {doc_id: score}}`` view of the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, its score (cosine for dense), title and text;
    ``key`` is the document's int64 key inside the index."""

    id: str
    score: float
    title: str
    text: str
    key: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "title": self.title,
            "text": self.text,
            "key": self.key,
            "metadata": self.metadata,
        }

    @property
    def embedding_text(self) -> str:
        """What the encoder saw of this document (as ``Document.embedding_text``)."""
        return f"{self.title} {self.text}".strip()


class DocumentSource(Protocol):
    """What a ranking reads its hits from (the index's docstore)."""

    def get_many(self, keys: Sequence[int]) -> list[Any]: ...


class Ranking(Sequence[Hit]):
    """One query's results, best first: a sequence of :class:`Hit`, read on demand.

    ``ids``, ``keys`` and ``scores`` are there without touching the documents.
    """

    def __init__(
        self,
        query_id: str,
        ids: Sequence[str],
        keys: np.ndarray,
        scores: np.ndarray,
        documents: DocumentSource | None,
    ) -> None:
        self.query_id = query_id
        self.ids = tuple(ids)
        self.keys = np.asarray(keys, dtype=np.int64)
        self.scores = np.asarray(scores, dtype=np.float64)
        self._documents = documents
        self._hits: list[Hit] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...

    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        return self.hits()[index]

    def hits(self) -> list[Hit]:
        """Every hit with its document, read from the docstore once."""
        if self._hits is None:
            if self._documents is None:
                raise ValueError("this ranking was made without documents: only ids and scores")
            documents = self._documents.get_many(self.keys.tolist())
            self._hits = [
                Hit(doc.id, float(score), doc.title, doc.text, int(key), doc.metadata)
                for doc, key, score in zip(documents, self.keys, self.scores, strict=True)
            ]
        return self._hits

    def to_dict(self) -> dict[str, float]:
        """``{doc_id: score}``, best first."""
        return {doc_id: float(score) for doc_id, score in zip(self.ids, self.scores, strict=True)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranking):
            return NotImplemented
        return (
            self.query_id == other.query_id
            and self.ids == other.ids
            and np.array_equal(self.keys, other.keys)
            and np.array_equal(self.scores, other.scores)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{i}: {s:.4f}" for i, s in zip(self.ids[:3], self.scores, strict=False))
        more = ", ..." if len(self) > 3 else ""
        return f"Ranking(query {self.query_id!r}, {len(self)} hits: {shown}{more})"


class Results(Mapping[str, Ranking]):
    """Many queries' rankings, by query id, in the order the queries were given."""

    def __init__(self, rankings: Sequence[Ranking]) -> None:
        self.rankings = list(rankings)
        self._by_id = {ranking.query_id: ranking for ranking in self.rankings}
        if len(self._by_id) != len(self.rankings):
            raise ValueError("query ids must be unique")

    def __getitem__(self, query_id: str) -> Ranking:
        return self._by_id[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self.rankings)

    def to_beir(self) -> dict[str, dict[str, float]]:
        """The BEIR run ``{query_id: {doc_id: score}}`` that pytrec_eval and BEIR read."""
        return {ranking.query_id: ranking.to_dict() for ranking in self.rankings}

    def __repr__(self) -> str:
        return f"Results({len(self)} queries)"


def results_from_lists(
    query_ids: Sequence[str],
    ranked: Sequence[Sequence[tuple[int, float]]],
    ids_of: Callable[[Sequence[int]], list[str]],
    documents: DocumentSource | None,
) -> Results:
    """Results from each query's ``(key, score)`` list; ``ids_of(keys)`` names the keys
    (one read for every distinct key of the batch)."""
    keys = sorted({key for found in ranked for key, _ in found})
    doc_ids = dict(zip(keys, ids_of(keys), strict=True))
    rankings = []
    for query_id, found in zip(query_ids, ranked, strict=True):
        found_keys = np.fromiter((key for key, _ in found), dtype=np.int64, count=len(found))
        scores = np.fromiter((score for _, score in found), dtype=np.float64, count=len(found))
        ids = [doc_ids[key] for key, _ in found]
        rankings.append(Ranking(query_id, ids, found_keys, scores, documents))
    return Results(rankings)
