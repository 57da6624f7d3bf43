from __future__ import annotations

import numpy as np
import pytest

from retriever.core.errors import RetrieverError
from retriever.search import fusion as fusion_module
from retriever.search.fusion import (
    fuse,
    min_max,
    rank_candidates,
    ranked_lists,
    reciprocal_rank_fusion,
    weighted_fusion,
)

DENSE = {"a": 0.9, "b": 0.8, "c": 0.1}
SPARSE = {"c": 12.0, "d": 6.0, "a": 3.0}


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion([DENSE, SPARSE], k=60)
    assert fused == pytest.approx(
        {"a": 1 / 61 + 1 / 63, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    )
    # Only ranks matter: rescaling one list's scores changes nothing.
    scaled = {doc: 1000 * score for doc, score in SPARSE.items()}
    assert reciprocal_rank_fusion([DENSE, scaled]) == fused


def test_weighted_fusion_of_min_max_scores() -> None:
    assert min_max(SPARSE) == {"c": 1.0, "d": pytest.approx(1 / 3), "a": 0.0}
    assert min_max({"x": 2.0, "y": 2.0}) == {"x": 1.0, "y": 1.0}
    assert min_max({}) == {}
    fused = weighted_fusion([DENSE, SPARSE], [0.75, 0.25])
    assert fused == pytest.approx({"a": 0.75, "b": 0.75 * 0.7 / 0.8, "c": 0.25, "d": 0.25 / 3})
    # A weight of 1 on the first list keeps its order; documents only in the second get 0.
    alone = fuse(DENSE, SPARSE, "weighted", first_weight=1.0)
    assert sorted(alone, key=lambda d: -alone[d])[:3] == ["a", "b", "c"] and alone["d"] == 0


def test_fuse_checks_its_arguments() -> None:
    assert fuse(DENSE, SPARSE) == reciprocal_rank_fusion([DENSE, SPARSE])
    with pytest.raises(RetrieverError, match="unknown fusion 'max'"):
        fuse(DENSE, SPARSE, "max")
    with pytest.raises(RetrieverError, match=r"--dense-weight must lie in \[0, 1\]"):
        fuse(DENSE, SPARSE, "weighted", first_weight=1.5)
    with pytest.raises(ValueError):
        weighted_fusion([DENSE], [0.5, 0.5])


def test_one_retriever_is_ranked_without_fusing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # Best first as retrievers return them, with ties (few distinct scores), -1 padding
    # and -inf scores of unmatched documents, as BM25 and the sparse index pad.
    scores = -np.sort(-rng.integers(0, 5, size=(50, 20)).astype(np.float32), axis=1)
    rows = np.stack([rng.permutation(1000)[:20] for _ in range(50)]).astype(np.int64)
    rows[:10, 15:] = -1
    scores[:10, 15:] = -np.inf
    candidates = [
        {int(r): float(s) for r, s in zip(qr, qs, strict=True) if r >= 0}
        for qs, qr in zip(scores, rows, strict=True)
    ]
    expected = rank_candidates([candidates], 12)
    monkeypatch.setattr(fusion_module, "rank_candidates", lambda *a, **k: 1 / 0)
    ranked = ranked_lists([(scores, rows)], 12)
    assert ranked == expected
    assert all(type(r) is int and type(s) is float for found in ranked for r, s in found)
