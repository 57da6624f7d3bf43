"""``retriever bench``: EmbedFilter against the unfiltered index and fitted baselines.

The corpus and queries are encoded once per setting (prompt x pooling; the embedding store
makes reruns free), then every variant (filter band x tau, baselines, index types) is
built into an index folder by the build pipeline, searched through ``Searcher`` and scored
in the same run, so ratios to the unfiltered row compare numbers measured side by side on
the path users search. Writes ``results.json`` (one row per variant), ``results.md``,
``plot.png`` and gzipped TREC runs under ``runs/``.

Modules: ``variants`` (settings and projections), ``rows`` (build and search each
variant), ``checks`` (token alignment, BEIR cross-check), ``report`` (tables and plot),
``run`` (the runs).
"""

from retriever.evaluation.bench.run import run_bench, run_scaling_bench
from retriever.evaluation.bench.variants import (
    BenchModel,
    BenchSettings,
    ScalingSettings,
    parse_index_type,
)

__all__ = [
    "BenchModel",
    "BenchSettings",
    "ScalingSettings",
    "parse_index_type",
    "run_bench",
    "run_scaling_bench",
]
