"""Cross-validated fusion: folds partition the queries, a query is never scored with a
setting tuned on its own labels, and the choice can fall back to the better retriever."""

from __future__ import annotations

import numpy as np
import pytest

from retriever import RetrieverError
from retriever.tuning import (
    FusionSetting,
    beats_by_one_standard_error,
    cross_validate_fusion,
    fusion_grid,
    kfold,
)


def test_folds_partition_the_queries_deterministically() -> None:
    ids = [f"q{i}" for i in range(23)]
    folds = kfold(ids, 5, seed=3)
    assert sorted(q for fold in folds for q in fold) == sorted(ids)
    assert {len(fold) for fold in folds} <= {4, 5}
    assert folds == kfold(ids, 5, seed=3) and folds != kfold(ids, 5, seed=4)
    with pytest.raises(RetrieverError, match="folds need"):
        kfold(ids[:3], 5)


def _case(n: int, odd: str) -> tuple[list[str], list[dict], list[dict], dict]:
    """``n`` queries whose relevant document the first retriever ranks first, except
    ``odd``, where only the second retriever finds it."""
    ids = [f"q{i}" for i in range(n)]
    first, second, qrels = [], [], {}
    for q in ids:
        gold = f"{q}-gold"
        qrels[q] = {gold: 1}
        if q == odd:
            first.append({"noise-a": 0.9, "noise-b": 0.5, gold: 0.1})
            second.append({gold: 0.9, "noise-a": 0.2, "noise-b": 0.1})
        else:
            first.append({gold: 0.9, "noise-a": 0.5, "noise-b": 0.1})
            second.append({"noise-a": 0.9, "noise-b": 0.5, gold: 0.1})
    return ids, first, second, qrels


def test_a_held_out_query_is_scored_with_a_setting_tuned_without_it() -> None:
    ids, first, second, qrels = _case(10, odd="q4")
    # Tuned on its own label, the odd query would take the second retriever (weight 0)...
    in_sample = FusionSetting("weighted", 0.0).fuse(first[4], second[4])
    assert max(in_sample, key=in_sample.get) == "q4-gold"
    # ...but left out of 10 folds, it is fused as the other nine queries want.
    chosen = cross_validate_fusion(ids, first, second, qrels, folds=10)
    for fold in chosen.folds:
        assert fold["train_queries"] == 9 and fold["held_out_queries"] == 1
        if fold["held_out"] == ["q4"]:
            assert fold["held_out_ndcg@10"] < 1.0 and fold["train_ndcg@10"] > 0.9
        else:
            assert fold["held_out_ndcg@10"] == pytest.approx(1.0)
    run = chosen.run["q4"]
    assert run["q4-gold"] < max(run.values())


def test_a_useless_second_retriever_is_weighted_out() -> None:
    ids, first, second, qrels = _case(12, odd="none")
    chosen = cross_validate_fusion(ids, first, second, qrels, folds=3)
    for i, q in enumerate(ids):
        assert list(chosen.run[q]) == sorted(first[i], key=lambda d: -first[i][d])
    assert chosen.mean_fold_score == pytest.approx(1.0)


def test_the_grid_holds_both_fusions_and_both_single_retrievers() -> None:
    grid = fusion_grid()
    assert FusionSetting("weighted", 1.0) in grid and FusionSetting("weighted", 0.0) in grid
    assert FusionSetting("rrf", 0.5, 60) in grid
    rrf = FusionSetting("rrf", 0.5, 60).fuse({"a": 3.0, "b": 1.0}, {"b": 2.0})
    assert rrf == pytest.approx({"a": 0.5 / 61, "b": 0.5 / 62 + 0.5 / 61})


def test_a_blend_that_helps_every_query_is_kept_and_one_by_luck_is_not() -> None:
    ids = [f"q{i}" for i in range(12)]
    qrels = {q: {f"{q}-gold": 1} for q in ids}
    # Each retriever ranks the gold document second behind its own noise: fused, it wins.
    first = [{f"{q}-a": 0.9, f"{q}-gold": 0.8, "x": 0.1} for q in ids]
    second = [{f"{q}-b": 0.9, f"{q}-gold": 0.8, "y": 0.1} for q in ids]
    chosen = cross_validate_fusion(ids, first, second, qrels, folds=3)
    assert all(fold["blend_kept"] for fold in chosen.folds)
    assert chosen.mean_fold_score == pytest.approx(1.0)
    # A gain on one query of twelve, nothing elsewhere: its mean is one standard error
    # exactly, so it is luck, not a gain; a steady gain on every query is kept.
    baseline = np.full(12, 0.5)
    assert not beats_by_one_standard_error(baseline + 0.5 * np.eye(12)[0], baseline)
    assert beats_by_one_standard_error(baseline + 0.1 + 0.01 * np.arange(12), baseline)
    assert not beats_by_one_standard_error(np.array([0.9]), np.array([0.1]))
