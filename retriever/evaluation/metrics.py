"""BEIR-style evaluation: pytrec_eval metrics, TREC run files, and timed searches.

Metrics are averaged over every judged query of the split; a query the run lacks counts
as 0 (pytrec_eval alone would silently skip it).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytrec_eval

from retriever.core.errors import RetrieverError
from retriever.core.sizes import folder_bytes
from retriever.parts.bm25 import BM25_DIR
from retriever.parts.dense.backends import MILVUS_LITE_FILE, backend_bytes
from retriever.parts.dense.faiss_index import INDEX_FILE
from retriever.parts.docstore import DOCSTORE_DIR
from retriever.parts.sparse import SPARSE_DIR
from retriever.search.results import Results
from retriever.search.searcher import Searcher

T = TypeVar("T")
Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# A row's nDCG@10 of each judged query, in the queries' order: what a ratio's bootstrap
# interval resamples (retriever.evaluation.intervals).
PER_QUERY = "ndcg_at_10_per_query"


def write_per_query(
    path: Path, query_ids: list[str], scores: Iterable[tuple[dict[str, Any], Sequence[float]]]
) -> None:
    """The query ids on the first line, then one line per scored row: its label (``{"run":
    ...}`` or ``{"row": ...}``) and its nDCG@10 per query in that order, rounded to 6
    decimals, so a rerun that moves no document writes the same bytes."""
    lines = [json.dumps({"query_ids": query_ids})]
    for label, values in scores:
        lines.append(json.dumps({**label, "ndcg_at_10": [round(v, 6) for v in values]}))
    path.write_text("\n".join(lines) + "\n")


# Our names -> pytrec_eval's measure names.
METRICS = {
    "ndcg_at_10": "ndcg_cut_10",
    "ndcg_at_100": "ndcg_cut_100",
    "recall_at_100": "recall_100",
    "map_at_100": "map_cut_100",
}


def per_query_metrics(qrels: Qrels, run: Run | Results) -> dict[str, dict[str, float]]:
    """Each judged query's nDCG@10, nDCG@100, Recall@100 and MAP@100 (our names, every
    query of ``qrels``, in its order; a query the run lacks scores 0 on each)."""
    if isinstance(run, Results):
        run = run.to_beir()
    if not qrels:
        raise RetrieverError("no relevance judgements to evaluate against")
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, {"ndcg_cut.10,100", "recall.100", "map_cut.100"}
    )
    found = evaluator.evaluate({q: run[q] for q in qrels if q in run})
    return {
        q: {ours: float(found.get(q, {}).get(theirs, 0.0)) for ours, theirs in METRICS.items()}
        for q in qrels
    }


def evaluate_run(qrels: Qrels, run: Run | Results) -> dict[str, float]:
    """Mean nDCG@10, nDCG@100, Recall@100 and MAP@100 over the judged queries."""
    per_query = per_query_metrics(qrels, run)
    return {
        ours: sum(scores[ours] for scores in per_query.values()) / len(per_query)
        for ours in METRICS
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


def index_sizes(folder: Path, dense: dict[str, Any] | None = None) -> dict[str, int]:
    """Bytes on disk of each part of an index folder (retrievers, docstore) and in all;
    ``dense`` is the manifest's description of the dense backend, whose files (codes,
    binary centre, rescore vectors) the dense part counts."""
    sizes = {
        part: folder_bytes(folder / name)
        for part, name in (("sparse", SPARSE_DIR), ("bm25", BM25_DIR), ("docstore", DOCSTORE_DIR))
        if (folder / name).exists()
    }
    dense_bytes = backend_bytes(folder, dense) if dense else None
    if dense_bytes is None:  # no manifest entry, or a server's collection: what is here
        file = folder / INDEX_FILE
        file = file if file.exists() else folder / MILVUS_LITE_FILE
        dense_bytes = folder_bytes(file) if file.exists() else None
    if dense_bytes is not None:
        sizes["dense"] = dense_bytes
    return {**sizes, "folder": folder_bytes(folder)}


@dataclass(frozen=True)
class EncodedQueries:
    """Judged queries with their raw pooled embeddings, encoded once for every method
    (and every index of one model) that searches them, and what encoding them cost:
    ``batch_seconds`` for all at once, ``latency_ms`` (p50, p95) one at a time."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray | None = None
    batch_seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=lambda: {"p50": 0.0, "p95": 0.0})


def encode_timed(
    encode: Callable[[list[str]], np.ndarray],
    queries: Mapping[str, str],
    *,
    warmup: int = 5,
    latency_queries: int | None = None,
) -> EncodedQueries:
    """Encode ``queries`` with ``encode`` in one timed batch (after a small warm-up: it is
    the LLM forward over every query, too costly to repeat for a median), then time one
    query at a time over the first ``latency_queries`` (all by default)."""
    texts = list(queries.values())
    encode(texts[:warmup])
    started = time.perf_counter()
    embeddings = encode(texts)
    seconds = time.perf_counter() - started
    single = [lambda t=t: encode([t]) for t in texts[:latency_queries]]
    return EncodedQueries(
        list(queries), texts, embeddings, seconds, percentiles_ms(time_each(single, warmup))
    )


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
    encoded: EncodedQueries | None = None,
    latency_queries: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Run]]:
    """Search every judged query with each method; one report row and one run per method.

    Hybrid methods give one row per fusion. Latency is per query, split into query
    encoding (LLM forward, paid by every method but BM25) and search (the filter, the
    retrievers and the fusion), each as median and p95 after ``warmup`` untimed queries,
    over the first ``latency_queries`` (all by default). ``batch_qps`` is the end-to-end
    throughput of one batched search over all queries, encoding included; ``search_qps``
    the same without encoding (medians of 3). ``index_bytes`` counts the files the method
    reads (FAISS file, sparse or BM25 folder). ``encoded`` gives the queries' embeddings
    and encoding times when the caller has them (a benchmark searches many indexes of one
    model). Runs are keyed ``method`` or ``method/fusion``.
    """
    queries = judged_queries(queries, qrels)
    methods = list(methods or searcher.methods)
    if encoded is not None and encoded.ids != list(queries):
        raise RetrieverError("the encoded queries are not the judged queries evaluated")
    if encoded is None:
        encoded = EncodedQueries(list(queries), list(queries.values()))
        if any(searcher.needs_encoder(method) for method in methods):
            encoded = encode_timed(
                searcher.encode_queries, queries, warmup=warmup, latency_queries=latency_queries
            )
    part_bytes = index_sizes(searcher.folder, searcher.manifest.backend)
    rows, runs = [], {}
    for method in methods:
        for fusion in fusions if "+" in method else (None,):
            options = {"method": method, "fusion": fusion or "rrf", "dense_weight": dense_weight}
            row, run = _measure_method(
                searcher, encoded, qrels, k, options, warmup, latency_queries
            )
            row["fusion"] = fusion
            row["index_bytes"] = sum(part_bytes[part] for part in method.split("+"))
            rows.append(row)
            runs[method if fusion is None else f"{method}/{fusion}"] = run
    return rows, runs


def _measure_method(
    searcher: Searcher,
    encoded: EncodedQueries,
    qrels: Qrels,
    k: int,
    options: dict[str, Any],
    warmup: int,
    latency_queries: int | None,
) -> tuple[dict[str, Any], Run]:
    """One method's row (metrics and timings) and run, searching through ``searcher``."""
    embeddings = encoded.embeddings if searcher.needs_encoder(options["method"]) else None
    texts = encoded.texts

    def one(i: int) -> Any:
        alone = None if embeddings is None else embeddings[i : i + 1]
        return searcher.rank([texts[i]], k, embeddings=alone, **options)

    results, search_seconds = median_seconds(
        lambda: searcher.rank(texts, k, embeddings=embeddings, query_ids=encoded.ids, **options)
    )
    single = [lambda i=i: one(i) for i in range(len(texts))[:latency_queries]]
    search_ms = percentiles_ms(time_each(single, warmup))
    encode_ms = encoded.latency_ms if embeddings is not None else {"p50": 0.0, "p95": 0.0}
    encode_seconds = encoded.batch_seconds if embeddings is not None else 0.0
    run = results.to_beir()
    row = {
        "method": options["method"],
        "queries": len(texts),
        "k": k,
        **evaluate_run(qrels, run),
        "encode_ms_p50": encode_ms["p50"],
        "encode_ms_p95": encode_ms["p95"],
        "search_ms_p50": search_ms["p50"],
        "search_ms_p95": search_ms["p95"],
        "batch_qps": len(texts) / (search_seconds + encode_seconds),
        "search_qps": len(texts) / search_seconds,
        "ran_on": _ran_on(searcher, options["method"]),
    }
    return row, run


def _ran_on(searcher: Searcher, method: str) -> str:
    """Where the timed dense search ran: "CPU", "GPU 0 (one GPU)", "CPU (reason)", or the
    backend (milvus)."""
    if "dense" not in method:
        return "CPU"
    placement = getattr(searcher.index, "placement", None)
    return placement.where if placement is not None else searcher.index.kind
