"""Checks beside the benchmark's rows: token alignment of the documents, and BEIR's own
exact search of the unfiltered embeddings as a peer cross-check of the metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from retriever.core.spec import FilterSpec
from retriever.encode.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encode.lens import TokenLens, alignment_metrics
from retriever.evaluation.bench.variants import BenchSettings
from retriever.evaluation.metrics import median_seconds


def alignment_report(
    spectrum: UnembeddingSpectrum,
    tokenizer: Any,
    documents: np.ndarray,
    doc_token_ids: list[list[int]],
    settings: BenchSettings,
    examples: int = 3,
) -> list[dict[str, Any]]:
    """Alignment metrics of the documents, raw and through each edge / nomean filter,
    with the top tokens of the first few documents as examples."""
    entries = []
    filters = [("raw", None, 1.0, FilterSpec(tau=1, remove_mean_direction=False))]
    for tau in settings.taus:
        if tau > 1:
            filters.append(
                ("embedfilter", "edge", tau, FilterSpec(tau=tau, remove_mean_direction=False))
            )
        if settings.mean_direction:
            refined = FilterSpec(tau=tau, remove_mean_direction=True)
            filters.append(("embedfilter-nomean", "edge", tau, refined))
    for method, band, tau, spec in filters:
        lens = TokenLens(
            spectrum.unembedding, EmbedFilter.from_unembedding(spectrum, spec), tokenizer
        )
        space = "raw" if method == "raw" else "filtered"
        entry = {"space": method, "band": band, "tau": tau}
        entry.update(alignment_metrics(lens, documents, doc_token_ids, space))
        entry["examples"] = [
            [token.token for token in tokens]
            for tokens in lens.top_tokens(documents[:examples], space, top=10)
        ]
        entry["displayed_examples"] = [
            [token.token for token in tokens]
            for tokens in lens.top_tokens(documents[:examples], space, top=10, words_only=True)
        ]
        entries.append(entry)
    return entries


class _PrecomputedModel:
    """BEIR's model protocol over embeddings we already have (for the peer cross-check)."""

    def __init__(self, queries: np.ndarray, documents: np.ndarray) -> None:
        self.queries = queries
        self.documents = documents

    def encode_queries(self, texts: list[str], **kwargs: Any) -> Any:
        import torch

        # BEIR passes the queries in the order of the dict it was given, which is ours.
        assert len(texts) == len(self.queries)
        return torch.from_numpy(self.queries)

    def encode_corpus(self, corpus: list[dict[str, Any]], **kwargs: Any) -> Any:
        import torch

        return torch.from_numpy(self.documents[[doc["_row"] for doc in corpus]])


def beir_cross_check(
    documents: np.ndarray,
    queries: np.ndarray,
    query_texts: dict[str, str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    k: int,
) -> tuple[dict[str, float], float]:
    """BEIR's own exact search + evaluation of the unfiltered embeddings.

    Returns the metrics and the median seconds of one search over all queries.
    """
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    search = DenseRetrievalExactSearch(
        _PrecomputedModel(queries, documents), batch_size=128, show_progress_bar=False
    )
    # The text fields only order BEIR's chunks; "_row" tells our model which vector is whose.
    corpus = {doc_id: {"title": "", "text": "", "_row": row} for row, doc_id in enumerate(doc_ids)}
    results, seconds = median_seconds(
        lambda: search.search(corpus, query_texts, top_k=k, score_function="cos_sim")
    )
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(qrels, results, [10, 100])
    return {"ndcg_at_10": ndcg["NDCG@10"], "recall_at_100": recall["Recall@100"]}, seconds
