"""How often does a cross-validated hybrid lose to its better part? Two selection rules,
on synthetic per-query scores where the true gain of the best blend is known.

SciFact's test labels are what the hybrid rows report, so the rule that decides whether a
fold keeps a blend is judged here instead, on simulated retrievers: a strong one, a weak
one, and 60 blends that equal the strong one plus per-query noise, one of them better by
``gain``. The blends' noise is either mostly shared (``correlated``, like neighbouring
fusion weights) or drawn per blend (``independent``, the harder case for the t-test,
whose folds are not independent samples). Each replicate draws 300 queries and runs
5-fold cross-validation with:

- ``train-score 1-SE``: keep the best blend when its training-query score beats the
  better single retriever by one standard error of the paired difference (the previous
  rule);
- ``inner-CV t-test``: :func:`retriever.evaluation.tuning.choose_setting`, keep it when an inner
  cross-validation on the training queries finds a significant gain (the current rule).

Reported per gain: the mean of (cross-validated score - better single retriever), the
share of replicates where the hybrid lost, and the share of folds that kept a blend.

    python benchmarks/fusion_selection.py --out benchmarks/results/fusion-selection
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np
from report import markdown_table, write_report

from retriever.evaluation.tuning import choose_setting, kfold

Rule = Callable[[np.ndarray, np.ndarray, Sequence[int], int], int]


def train_score_one_se(scores: np.ndarray, train: np.ndarray, singles: Sequence[int], _) -> int:
    means = scores[:, train].mean(axis=1)
    best = int(np.argmax(means))
    single = max(singles, key=lambda g: means[g])
    gain = scores[best, train] - scores[single, train]
    kept = best != single and gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain))
    return best if kept else single


def inner_cv_t_test(scores: np.ndarray, train: np.ndarray, singles: Sequence[int], seed) -> int:
    return choose_setting(scores, train, singles, folds=5, seed=seed).setting


RULES: dict[str, Rule] = {
    "train-score 1-SE": train_score_one_se,
    "inner-CV t-test": inner_cv_t_test,
}


SHARED_NOISE = {"correlated": 0.6, "independent": 0.0}


def simulated_scores(
    rng: np.random.Generator, queries: int, blends: int, gain: float, shared_weight: float
):
    """Per-query nDCG of a weak retriever (row 0), blends, and a strong one (last row)."""
    strong = rng.beta(0.7, 0.5, queries)
    weak = np.clip(0.4 * strong + rng.normal(0, 0.2, queries), 0, 1)
    shared = rng.normal(0, 0.1, queries)
    rows = [weak]
    for b in range(blends):
        # Blends differ in how far they stray from the strong retriever, query by query.
        spread = 0.08 * (b % 7 + 1) / 4
        lift = gain if b == blends // 3 else 0.0
        noise = shared_weight * shared + rng.normal(0, spread, queries)
        rows.append(np.clip(strong + lift + noise, 0, 1))
    rows.append(strong)
    return np.array(rows), [0, len(rows) - 1]


def judge_rules(args: argparse.Namespace, blend_noise: str, gain: float) -> list[dict]:
    """Both rules on ``args.replicates`` draws of one scenario: one row per rule."""
    rng = np.random.default_rng(0)
    differences: dict[str, list[float]] = {name: [] for name in RULES}
    blend_folds = dict.fromkeys(RULES, 0)
    ids = list(range(args.queries))
    for replicate in range(args.replicates):
        scores, singles = simulated_scores(
            rng, args.queries, args.blends, gain, SHARED_NOISE[blend_noise]
        )
        better_single = max(scores[g].mean() for g in singles)
        for name, rule in RULES.items():
            held_out_means = []
            for held_out in kfold(ids, args.folds, replicate):
                train = np.setdiff1d(ids, held_out)
                setting = rule(scores, train, singles, replicate)
                blend_folds[name] += setting not in singles
                held_out_means.append(scores[setting, held_out].mean())
            differences[name].append(np.mean(held_out_means) - better_single)
    return [
        {
            "blend_noise": blend_noise,
            "true_gain": gain,
            "rule": name,
            "mean_cv_minus_better_single": float(np.mean(differences[name])),
            "share_of_runs_losing": float(np.mean(np.array(differences[name]) < -1e-12)),
            "share_of_folds_blending": blend_folds[name] / (args.replicates * args.folds),
        }
        for name in RULES
    ]


def report_body(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    table = markdown_table(
        [
            "blend noise",
            "true gain of the best blend",
            "rule",
            "mean CV - better single",
            "runs losing",
            "folds keeping a blend",
        ],
        (
            [
                row["blend_noise"],
                f"{row['true_gain']:g}",
                row["rule"],
                f"{row['mean_cv_minus_better_single']:+.4f}",
                f"{row['share_of_runs_losing']:.0%}",
                f"{row['share_of_folds_blending']:.0%}",
            ]
            for row in rows
        ),
    )
    return [
        f"{args.replicates} replicates of {args.queries} synthetic queries, "
        f"{args.blends} blends, {args.folds}-fold cross-validation.",
        "",
        *table,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gains", default="0,0.01,0.03,0.06", help="comma list of the best blend's true gains"
    )
    parser.add_argument("--replicates", type=int, default=200, help="draws per scenario")
    parser.add_argument("--queries", type=int, default=300, help="queries per draw")
    parser.add_argument("--blends", type=int, default=60, help="candidate blends per draw")
    parser.add_argument("--folds", type=int, default=5, help="outer cross-validation folds")
    parser.add_argument(
        "--out", default="benchmarks/results/fusion-selection", help="results folder"
    )
    args = parser.parse_args()
    rows = [
        row
        for blend_noise in SHARED_NOISE
        for gain in args.gains.split(",")
        for row in judge_rules(args, blend_noise, float(gain))
    ]
    record = {"settings": vars(args), "rows": rows}
    write_report(
        args.out,
        "fusion_selection",
        record,
        report_body(args, rows),
        title="How often a cross-validated hybrid loses to its better part",
    )


if __name__ == "__main__":
    main()
