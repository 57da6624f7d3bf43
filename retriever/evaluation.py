"""BEIR-style evaluation: pytrec_eval metrics, TREC run files, and timed searches.

Metrics are averaged over every judged query of the split; a query the run lacks counts
as 0 (pytrec_eval alone would silently skip it).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytrec_eval

from retriever.backends import MILVUS_LITE_FILE
from retriever.docstore import DOCSTORE_DIR
from retriever.errors import RetrieverError
from retriever.index import INDEX_FILE
from retriever.lexical import BM25_DIR
from retriever.manifest import folder_bytes
from retriever.searcher import Searcher
from retriever.sparse import SPARSE_DIR

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
            # Nine significant digits: reciprocal-rank sums differ in the 7th decimal, and
            # a rounded tie would let trec_eval reorder the list.
            f"{query_id} Q0 {doc_id} {rank} {score:.9g} {tag}\n"
            for rank, (doc_id, score) in enumerate(ranked, start=1)
        ]
    data = "".join(lines).encode("utf-8")
    # No timestamp in the gzip header: an unchanged run rewrites to the same bytes, so a
    # benchmark rerun only changes the run files whose rankings changed.
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
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


def index_sizes(folder: Path) -> dict[str, int]:
    """Bytes on disk of each part of an index folder (retrievers, docstore) and in all."""
    dense = folder / INDEX_FILE
    paths = {
        # The dense part: a FAISS file, or a Milvus Lite database.
        "dense": dense if dense.exists() else folder / MILVUS_LITE_FILE,
        "sparse": folder / SPARSE_DIR,
        "bm25": folder / BM25_DIR,
        "docstore": folder / DOCSTORE_DIR,
    }
    sizes = {part.strip(): folder_bytes(path) for part, path in paths.items() if path.exists()}
    return {**sizes, "folder": folder_bytes(folder)}


def evaluate_index(
    searcher: Searcher,
    queries: Mapping[str, str],
    qrels: Qrels,
    *,
    k: int = 100,
    methods: Sequence[str] | None = None,
    fusions: Sequence[str] = ("rrf",),
    dense_weight: float = 0.5,
    warmup: int = 5,
) -> tuple[list[dict[str, Any]], dict[str, Run]]:
    """Search every judged query with each method; one report row and one run per method.

    Hybrid methods give one row per fusion. Latency is per query, split into query
    encoding (LLM forward, paid by every method but BM25) and search (the retrievers and
    the fusion), each as median and p95 after ``warmup`` untimed queries; ``batch_qps`` is
    the end-to-end throughput of one batched search over all queries (median of 3).
    ``index_bytes`` counts the files the method reads (FAISS file, sparse or BM25 folder).
    Runs are keyed ``method`` or ``method/fusion``.
    """
    queries = judged_queries(queries, qrels)
    query_ids, texts = list(queries), list(queries.values())
    methods = list(methods or searcher.methods)
    needs_encoder = {method: searcher.needs_encoder(method) for method in methods}
    embeddings, encode_seconds, encode_ms = None, 0.0, {"p50": 0.0, "p95": 0.0}
    if any(needs_encoder.values()):
        # One batched encoding, timed after a small warm-up: it is the LLM forward over
        # every query, too costly to repeat for a median.
        searcher.encode_queries(texts[:warmup])
        started = time.perf_counter()
        embeddings = searcher.encode_queries(texts)
        encode_seconds = time.perf_counter() - started
        encode_ms = percentiles_ms(
            time_each([lambda t=t: searcher.encode_queries([t]) for t in texts], warmup)
        )
    part_bytes = index_sizes(searcher.folder)
    rows, runs = [], {}
    for method in methods:
        encoded = embeddings if needs_encoder[method] else None
        for fusion in fusions if "+" in method else (None,):
            options = {"method": method, "fusion": fusion or "rrf", "dense_weight": dense_weight}
            ranked, batch_seconds = median_seconds(
                lambda options=options, encoded=encoded: searcher.rank(
                    texts, k, embeddings=encoded, **options
                )
            )
            run = searcher.to_run(query_ids, ranked)
            single = [
                lambda i=i, options=options, encoded=encoded: searcher.rank(
                    [texts[i]],
                    k,
                    embeddings=None if encoded is None else encoded[i : i + 1],
                    **options,
                )
                for i in range(len(texts))
            ]
            search_ms = percentiles_ms(time_each(single, warmup))
            own_encode = encode_ms if encoded is not None else {"p50": 0.0, "p95": 0.0}
            rows.append(
                {
                    "method": method,
                    "fusion": fusion,
                    "queries": len(texts),
                    "k": k,
                    **evaluate_run(qrels, run),
                    "encode_ms_p50": own_encode["p50"],
                    "encode_ms_p95": own_encode["p95"],
                    "search_ms_p50": search_ms["p50"],
                    "search_ms_p95": search_ms["p95"],
                    "batch_qps": len(texts)
                    / (batch_seconds + (encode_seconds if encoded is not None else 0.0)),
                    "index_bytes": sum(part_bytes[part] for part in method.split("+")),
                }
            )
            runs[method if fusion is None else f"{method}/{fusion}"] = run
    return rows, runs
