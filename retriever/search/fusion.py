"""Fusing ranked lists of two retrievers: reciprocal-rank fusion and a weighted sum.

Both work on one query's candidates, ``{doc: score}`` per retriever, so any pair of
retrievers (dense, key-token sparse, BM25) fuses alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from retriever.core.config import FUSIONS
from retriever.core.errors import RetrieverError

Doc = TypeVar("Doc", bound=Hashable)

# Cormack, Clarke & Buettcher (2009): k = 60 damps the head of each list.
RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Mapping[Doc, float]], k: int = RRF_K
) -> dict[Doc, float]:
    """``sum over lists of 1 / (k + rank)``, rank 1 = best score of that list."""
    fused: dict[Doc, float] = {}
    for ranking in rankings:
        ordered = sorted(ranking.items(), key=lambda item: -item[1])
        for rank, (doc, _) in enumerate(ordered, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return fused


def min_max(ranking: Mapping[Doc, float]) -> dict[Doc, float]:
    """Scores rescaled to [0, 1] within the list (all 1 when they are all equal)."""
    if not ranking:
        return {}
    low, high = min(ranking.values()), max(ranking.values())
    if high == low:
        return dict.fromkeys(ranking, 1.0)
    return {doc: (score - low) / (high - low) for doc, score in ranking.items()}


def weighted_fusion(
    rankings: Sequence[Mapping[Doc, float]], weights: Sequence[float]
) -> dict[Doc, float]:
    """``sum of weight * min-max normalised score``; a list missing a document gives it 0."""
    if len(rankings) != len(weights):
        raise ValueError("one weight per ranking is needed")
    fused: dict[Doc, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for doc, score in min_max(ranking).items():
            fused[doc] = fused.get(doc, 0.0) + weight * score
    return fused


def fuse(
    first: Mapping[Doc, float],
    second: Mapping[Doc, float],
    method: str = "rrf",
    first_weight: float = 0.5,
) -> dict[Doc, float]:
    """Fuse two candidate lists; ``first_weight`` (in [0, 1]) only matters for ``weighted``."""
    if method == "rrf":
        return reciprocal_rank_fusion([first, second])
    if method == "weighted":
        if not 0.0 <= first_weight <= 1.0:
            raise RetrieverError(f"--dense-weight must lie in [0, 1], got {first_weight}")
        return weighted_fusion([first, second], [first_weight, 1.0 - first_weight])
    raise RetrieverError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")


def ranked_lists(
    results: Sequence[tuple[np.ndarray, np.ndarray]],
    k: int,
    method: str = "rrf",
    first_weight: float = 0.5,
) -> list[list[tuple[int, float]]]:
    """Per query, the best ``k`` ``(row, score)`` pairs of one retriever's ``(scores, rows)``
    arrays, or of two retrievers' fused (rows < 0 pad short lists and are dropped)."""
    if len(results) == 1:
        scores, rows = results[0]
        return [
            _best(query_rows, query_scores, k)
            for query_scores, query_rows in zip(scores.tolist(), rows.tolist(), strict=True)
        ]
    # Whole arrays to Python numbers at once: far cheaper than one numpy scalar per item.
    candidates = [
        [
            {r: s for r, s in zip(query_rows, query_scores, strict=True) if r >= 0}
            for query_scores, query_rows in zip(scores.tolist(), rows.tolist(), strict=True)
        ]
        for scores, rows in results
    ]
    return rank_candidates(candidates, k, method, first_weight)


def rank_candidates(
    candidates: Sequence[Sequence[Mapping[int, float]]],
    k: int,
    method: str = "rrf",
    first_weight: float = 0.5,
) -> list[list[tuple[int, float]]]:
    """Per query, the best ``k`` of one retriever's ``{row: score}`` candidates, or of two
    retrievers' fused; ties go to the lower row."""
    if len(candidates) not in (1, 2):
        raise ValueError("one or two retrievers' results can be ranked")
    ranked = []
    for lists in zip(*candidates, strict=True):
        fused = lists[0] if len(lists) == 1 else fuse(lists[0], lists[1], method, first_weight)
        ranked.append(top_k(fused, k))
    return ranked


def top_k(scores: Mapping[Doc, float], k: int) -> list[tuple[Doc, float]]:
    """The ``k`` best ``(doc, score)`` pairs, best first; ties go to the lower doc."""
    return sorted(scores.items(), key=_order)[:k]


def _best(rows: list[int], scores: list[float], k: int) -> list[tuple[int, float]]:
    """One retriever's list as :func:`rank_candidates` ranks it, without the dict: a
    retriever never repeats a row within a list, and its list comes best first, so the
    sort only has ties to order (Python's sort is linear on sorted input)."""
    found = [(row, score) for row, score in zip(rows, scores, strict=True) if row >= 0]
    found.sort(key=_order)
    return found[:k]


def _order(item: tuple[Doc, float]) -> tuple[float, Doc]:
    return -item[1], item[0]
