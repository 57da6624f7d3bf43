"""How sure a quality ratio is: paired bootstrap intervals over queries, and the verdict a
goal gets from one.

On a few hundred queries with nDCG@10 of 0.1-0.3, a ratio of 0.98 and one of 1.02 can be
the same result. So every ratio to a baseline is reported with a 95% interval from
resampling the queries (both runs take the same resample: the pairing removes what the
queries share), and a goal is judged "met" only when the whole interval clears it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

MET, MISSED, WITHIN_NOISE = "met", "missed", "within noise"


@dataclass(frozen=True)
class RatioInterval:
    """``ratio`` = mean(values) / mean(baseline), and its bootstrap interval."""

    ratio: float
    low: float
    high: float

    def verdict(self, at_least: float) -> str:
        """A goal "ratio at least ``at_least``": met when the whole interval clears it,
        missed when none of it does, else within noise."""
        if self.low >= at_least:
            return MET
        if self.high < at_least:
            return MISSED
        return WITHIN_NOISE

    def exceeds(self, other: RatioInterval) -> bool:
        """Whether this ratio is above ``other`` by more than either interval."""
        return self.low > other.high

    def shown(self, digits: int = 3) -> str:
        return f"{self.ratio:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict[str, float]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high}


def paired_ratio_interval(
    values: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> RatioInterval:
    """The ratio of the mean of ``values`` to the mean of ``baseline`` (one entry per
    query, in the same order) with its paired percentile bootstrap interval: each of
    ``resamples`` draws picks queries with replacement and takes both means over them."""
    ours, base = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if ours.shape != base.shape or ours.ndim != 1 or not len(ours):
        raise ValueError("values and baseline need one entry per query, the same queries")
    if base.mean() <= 0:
        raise ValueError("the baseline's mean is 0: a ratio to it is undefined")
    draws = np.random.default_rng(seed).integers(0, len(ours), size=(resamples, len(ours)))
    numerators, denominators = ours[draws].mean(axis=1), base[draws].mean(axis=1)
    ratios = numerators[denominators > 0] / denominators[denominators > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return RatioInterval(float(ours.mean() / base.mean()), float(low), float(high))


def per_query_vector(per_query: Mapping[str, float], query_ids: Sequence[str]) -> np.ndarray:
    """A run's per-query scores in ``query_ids`` order (a query it lacks scores 0)."""
    return np.array([per_query.get(q, 0.0) for q in query_ids], np.float64)


def interval_fields(interval: RatioInterval, prefix: str) -> dict[str, Any]:
    """A row's columns for one interval: ``PREFIX``, ``PREFIX_low``, ``PREFIX_high``."""
    return {prefix: interval.ratio, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}
