"""Choosing a hybrid's fusion without looking at the labels it is scored on.

SciFact (like most BEIR sets) ships test queries only, so the fusion weight and RRF's k
are chosen by k-fold cross-validation over the queries: for each fold, every setting of a
grid is scored on the other folds' queries, the best is applied to the held-out fold, and
the held-out folds' scores are what is reported. A query is never scored with a setting
chosen on its own labels.

The grid holds both fusions: the weighted sum of min-max normalised scores with the first
retriever's weight in 0, 0.05, ..., 1, and reciprocal-rank fusion with a weight in the
same steps and k in ``RRF_KS``. Weights 0 and 1 are the single retrievers.

A blend must earn its place. The best of 189 settings on 240 training queries wins partly
by luck, so its training score says little about the held-out fold; what does is how the
tuning itself generalises. Each fold therefore runs a second, inner cross-validation on its
training queries only: tune on the inner folds, score the inner held-out queries, and
compare those held-out scores with the better single retriever's, chosen the same way. The
fold keeps its best blend only when that paired gain is significant (one-sided paired
t-test, ``BLEND_SIGNIFICANCE``); otherwise it keeps the better single retriever. When the
retrievers add nothing to each other, the hybrid is then the better retriever on almost
every fold, which is what makes a hybrid that does not lose to its own part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pytrec_eval
from scipy import stats

from retriever.core.errors import RetrieverError
from retriever.search.fusion import top_k, weighted_fusion

WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))
RRF_KS = (1, 5, 10, 20, 40, 60, 100, 200)
TUNED_METRIC = "ndcg_cut_10"
# The one-sided p-value under which an inner-cross-validated gain counts as real.
BLEND_SIGNIFICANCE = 0.05

Item = TypeVar("Item")
Candidates = Sequence[Mapping[str, float]]  # per query: {doc id: score} of one retriever


@dataclass(frozen=True)
class FusionSetting:
    """One point of the grid: ``method`` is ``weighted`` or ``rrf`` (``rrf_k`` then set)."""

    method: str
    weight: float
    rrf_k: int | None = None

    def fuse(self, first: Mapping[str, float], second: Mapping[str, float]) -> dict[str, float]:
        weights = (self.weight, 1.0 - self.weight)
        if self.method == "weighted":
            return weighted_fusion([first, second], weights)
        # Weighted RRF, ties within a list ranked by doc id (the package's RRF has neither).
        fused: dict[str, float] = {}
        for ranking, weight in zip((first, second), weights, strict=True):
            for doc, reciprocal in _reciprocal_ranks(ranking, self.rrf_k).items():
                fused[doc] = fused.get(doc, 0.0) + weight * reciprocal
        return fused

    def describe(self) -> str:
        if self.method == "weighted":
            return f"weighted w={self.weight:g}"
        return f"rrf k={self.rrf_k} w={self.weight:g}"


def _reciprocal_ranks(ranking: Mapping[str, float], k: int) -> dict[str, float]:
    ordered = sorted(ranking.items(), key=lambda item: (-item[1], item[0]))
    return {doc: 1.0 / (k + rank) for rank, (doc, _) in enumerate(ordered, start=1)}


def fusion_grid(methods: Sequence[str] = ("weighted", "rrf")) -> list[FusionSetting]:
    grid = []
    for method in methods:
        if method == "weighted":
            grid += [FusionSetting("weighted", w) for w in WEIGHTS]
        elif method == "rrf":
            grid += [FusionSetting("rrf", w, k) for k in RRF_KS for w in WEIGHTS]
        else:
            raise RetrieverError(f"unknown fusion {method!r}; choose weighted or rrf")
    return grid


def kfold(query_ids: Sequence[Item], folds: int, seed: int = 0) -> list[list[Item]]:
    """The queries in ``folds`` disjoint groups of near-equal size (a seeded shuffle)."""
    if not 2 <= folds <= len(query_ids):
        raise RetrieverError(f"{folds} folds need 2 to {len(query_ids)} queries per fold")
    order = np.random.default_rng(seed).permutation(len(query_ids))
    return [[query_ids[i] for i in sorted(part)] for part in np.array_split(order, folds)]


@dataclass
class CrossValidated:
    """A cross-validated fusion: the held-out run, each fold's choice and score."""

    run: dict[str, dict[str, float]]
    folds: list[dict[str, object]]

    @property
    def mean_fold_score(self) -> float:
        return float(np.mean([fold["held_out_ndcg@10"] for fold in self.folds]))


def cross_validate_fusion(
    query_ids: Sequence[str],
    first: Candidates,
    second: Candidates,
    qrels: Mapping[str, Mapping[str, int]],
    *,
    folds: int = 5,
    methods: Sequence[str] = ("weighted", "rrf"),
    k: int = 100,
    seed: int = 0,
) -> CrossValidated:
    """Fuse two retrievers' candidates per query, the setting chosen by k-fold CV.

    Only judged queries take part. Each fold's setting maximises mean nDCG@10 over the
    other folds (ties: the earlier grid point), unless an inner cross-validation on those
    folds finds no significant gain over the better single retriever (see
    :func:`choose_setting`); the held-out queries are fused with it.
    """
    judged = [i for i, q in enumerate(query_ids) if q in qrels]
    ids = [query_ids[i] for i in judged]
    grid = fusion_grid(methods)
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(qrels[q]) for q in ids}, {TUNED_METRIC.replace("_cut_", "_cut.")}
    )
    fused_runs = []
    scores = np.zeros((len(grid), len(ids)))
    for g, setting in enumerate(grid):
        run = {
            query_id: dict(top_k(setting.fuse(first[i], second[i]), k))
            for query_id, i in zip(ids, judged, strict=True)
        }
        per_query = evaluator.evaluate(run)
        scores[g] = [per_query.get(q, {}).get(TUNED_METRIC, 0.0) for q in ids]
        fused_runs.append(run)
    singles = [
        g
        for g, setting in enumerate(grid)
        if setting.method == "weighted" and setting.weight in (0.0, 1.0)
    ]
    position = {q: n for n, q in enumerate(ids)}
    held_out_run: dict[str, dict[str, float]] = {}
    fold_reports = []
    for held_out in kfold(ids, folds, seed):
        held = set(held_out)
        train = np.array([position[q] for q in ids if q not in held])
        choice = choose_setting(scores, train, singles, folds, seed)
        test = [position[q] for q in held_out]
        for query_id in held_out:
            held_out_run[query_id] = fused_runs[choice.setting][query_id]
        fold_reports.append(
            {
                "setting": grid[choice.setting].describe(),
                "blend_kept": choice.blend_kept,
                "inner_cv_gain": choice.inner_gain,
                "inner_cv_p_value": choice.p_value,
                "held_out": list(held_out),
                "train_queries": len(train),
                "held_out_queries": len(test),
                "train_ndcg@10": float(scores[choice.setting, train].mean()),
                "held_out_ndcg@10": float(scores[choice.setting, test].mean()),
            }
        )
    return CrossValidated(held_out_run, fold_reports)


@dataclass(frozen=True)
class Choice:
    """A fold's setting (a row of the score matrix) and the evidence it was chosen on."""

    setting: int
    blend_kept: bool
    inner_gain: float
    p_value: float


def choose_setting(
    scores: np.ndarray, train: np.ndarray, singles: Sequence[int], folds: int, seed: int = 0
) -> Choice:
    """The setting to apply to a held-out fold, from per-query ``scores`` (settings x
    queries) on the ``train`` columns only: the best blend if an inner ``folds``-fold
    cross-validation over ``train`` finds its tuning beats the better single retriever
    (rows ``singles``) significantly, else that retriever."""
    best_single = _argmax(scores, train, singles)
    tuned = _argmax(scores, train)
    if tuned in singles or len(train) < 2:
        return Choice(best_single, False, 0.0, 1.0)
    blend_held_out = np.empty(len(train))
    single_held_out = np.empty(len(train))
    for part in kfold(range(len(train)), min(folds, len(train)), seed):
        inner = np.array(part)
        inner_train = np.delete(train, inner)
        blend_held_out[inner] = scores[_argmax(scores, inner_train), train[inner]]
        single_held_out[inner] = scores[_argmax(scores, inner_train, singles), train[inner]]
    gain = blend_held_out - single_held_out
    p_value = _one_sided_p(gain)
    blend_kept = p_value < BLEND_SIGNIFICANCE
    return Choice(tuned if blend_kept else best_single, blend_kept, float(gain.mean()), p_value)


def _argmax(scores: np.ndarray, columns: np.ndarray, rows: Sequence[int] | None = None) -> int:
    """The row with the highest mean over ``columns`` (ties: the earlier row)."""
    rows = list(range(len(scores))) if rows is None else list(rows)
    means = scores[np.ix_(rows, columns)].mean(axis=1)
    return rows[int(np.argmax(means))]


def _one_sided_p(gain: np.ndarray) -> float:
    """The paired t-test's p-value for a mean ``gain`` above zero (a constant gain is
    certain, a constant zero or loss is not)."""
    if np.all(gain == gain[0]):
        return 0.0 if gain[0] > 0 else 1.0
    return float(stats.ttest_1samp(gain, 0.0, alternative="greater").pvalue)
