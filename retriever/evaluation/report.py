"""One evaluation of an index on a BEIR split, as `retriever eval` reports it.

queries + qrels -> Searcher (each method) -> rows (nDCG, recall, latency, bytes)
                                          -> TREC runs
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.config import FUSIONS
from retriever.core.errors import RetrieverError
from retriever.data.datasets import load_qrels, load_queries
from retriever.evaluation.metrics import evaluate_index, index_sizes, write_trec_run
from retriever.search.searcher import Searcher


@dataclass(frozen=True)
class Judged:
    """A dataset's queries and the relevance judgements of one split."""

    dataset: str
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, dataset: str | Path, split: str = "test") -> Judged:
        return cls(str(dataset), split, load_queries(dataset), load_qrels(dataset, split))


def check_report_settings(k: int, fusions: Sequence[str]) -> None:
    """The report's own settings, checked before anything loads."""
    if k < 1:
        raise RetrieverError(f"-k must be at least 1, got {k}")
    if not fusions or set(fusions) - set(FUSIONS):
        raise RetrieverError(f"--fusion takes a comma list among {', '.join(FUSIONS)}")


def evaluation_report(
    searcher: Searcher,
    judged: Judged,
    *,
    k: int = 100,
    methods: Sequence[str] | None = None,
    fusions: Sequence[str] = FUSIONS,
    dense_weight: float = 0.5,
    runs: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate every method of ``methods`` (default: all the index answers) on the
    judged queries; returns the report (index, dataset, split, bytes per part, one row
    per method and fusion). ``runs``: a folder to write each method's ranking to, as
    ``<method>.trec.gz``."""
    check_report_settings(k, fusions)
    rows, trec_runs = evaluate_index(
        searcher,
        judged.queries,
        judged.qrels,
        k=k,
        methods=methods,
        fusions=list(fusions),
        dense_weight=dense_weight,
    )
    if runs is not None:
        for name, trec_run in trec_runs.items():
            tag = name.replace("/", "-").replace("+", "-")
            write_trec_run(trec_run, Path(runs) / f"{tag}.trec.gz", tag=tag)
    return {
        "index": str(searcher.folder),
        "dataset": judged.dataset,
        "split": judged.split,
        "bytes": index_sizes(searcher.folder, searcher.manifest.backend),
        "rows": rows,
    }
