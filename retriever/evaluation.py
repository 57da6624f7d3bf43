"""BEIR-style evaluation: pytrec_eval metrics, TREC run files, and timed searches.

Metrics are averaged over every judged query of the split; a query the run lacks counts
as 0 (pytrec_eval alone would silently skip it).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytrec_eval

from retriever.docstore import DOCSTORE_DIR
from retriever.errors import RetrieverError
from retriever.index import INDEX_FILE
from retriever.indexing import folder_bytes
from retriever.searcher import Searcher

T = TypeVar("T")
Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# Our names -> pytrec_eval's measure names.
METRICS = {
    "ndcg_at_10": "ndcg_cut_10",
    "ndcg_at_100": "ndcg_cut_100",
    "recall_at_100": "recall_100",
    "map_at_100": "map_cut_100",
}


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean nDCG@10, nDCG@100, Recall@100 and MAP@100 over the judged queries."""
    if not qrels:
        raise RetrieverError("no relevance judgements to evaluate against")
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, {"ndcg_cut.10,100", "recall.100", "map_cut.100"}
    )
    per_query = evaluator.evaluate({q: run[q] for q in qrels if q in run})
    return {
        ours: float(sum(per_query.get(q, {}).get(theirs, 0.0) for q in qrels) / len(qrels))
        for ours, theirs in METRICS.items()
    }


def write_trec_run(run: Run, path: str | Path, tag: str = "retriever") -> Path:
    """Write ``qid Q0 docid rank score tag`` lines, best first; ``.gz`` paths are gzipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for query_id, scores in run.items():
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        lines += [
            f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n"
            for rank, (doc_id, score) in enumerate(ranked, start=1)
        ]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)
    return path


def read_trec_run(path: str | Path) -> Run:
    opener = gzip.open if Path(path).suffix == ".gz" else open
    run: Run = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            query_id, _, doc_id, _, score, _ = line.split()
            run.setdefault(query_id, {})[doc_id] = float(score)
    return run


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def time_each(calls: list[Callable[[], Any]], warmup: int = 5) -> list[float]:
    """Seconds taken by each call, after running the first ``warmup`` calls untimed."""
    for call in calls[:warmup]:
        call()
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def median_seconds(call: Callable[[], T], repeats: int = 3) -> tuple[T, float]:
    """Run ``call`` once untimed, then ``repeats`` times: ``(last result, median seconds)``.

    A single timed call of a batched search is at the mercy of whatever else the machine
    does in that second; the median of a few is not.
    """
    call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        timings.append(time.perf_counter() - started)
    return result, float(np.median(timings))


def judged_queries(queries: Mapping[str, str], qrels: Qrels) -> dict[str, str]:
    """The queries of a split: those with judgements (as BEIR's loader keeps them)."""
    kept = {q: text for q, text in queries.items() if q in qrels}
    if not kept:
        raise RetrieverError("none of the queries has relevance judgements in this split")
    return kept


def evaluate_index(
    searcher: Searcher,
    queries: Mapping[str, str],
    qrels: Qrels,
    *,
    k: int = 100,
    warmup: int = 5,
) -> tuple[dict[str, Any], Run]:
    """Search every judged query; return metrics, latencies and sizes, and the run.

    Latency is per query, split into query encoding (LLM forward + filter) and the FAISS
    search, each as median and p95 after ``warmup`` untimed queries; ``batch_qps`` is the
    end-to-end throughput of one batched search over all queries.
    """
    queries = judged_queries(queries, qrels)
    texts = list(queries.values())
    searcher.batch_search(dict(list(queries.items())[:warmup]), k)
    started = time.perf_counter()
    run = searcher.batch_search(queries, k)
    batch_seconds = time.perf_counter() - started

    encode = time_each([lambda t=t: searcher.embed_queries([t]) for t in texts], warmup)
    vectors = searcher.embed_queries(texts)
    search = time_each([lambda v=v: searcher.search_vectors(v[None], k) for v in vectors], warmup)
    encode_ms, search_ms = percentiles_ms(encode), percentiles_ms(search)
    folder = searcher.folder
    report = {
        "queries": len(texts),
        "k": k,
        **evaluate_run(qrels, run),
        "encode_ms_p50": encode_ms["p50"],
        "encode_ms_p95": encode_ms["p95"],
        "search_ms_p50": search_ms["p50"],
        "search_ms_p95": search_ms["p95"],
        "batch_qps": len(texts) / batch_seconds,
        "index_bytes": (folder / INDEX_FILE).stat().st_size,
        "docstore_bytes": folder_bytes(folder / DOCSTORE_DIR),
        "folder_bytes": folder_bytes(folder),
    }
    return report, run
