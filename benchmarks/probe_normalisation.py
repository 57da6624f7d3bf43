"""Checks behind the reference-gap paragraph of benchmarks/README.md (part 1).

Does the order of normalisation, or the precision of the SVD, explain why the edge band
scores higher here than in the reference probe? Reads the float32 PromptEOL embeddings
that `benchmarks/run_scifact.sh` leaves in the embedding cache, so it takes seconds.

    .venv/bin/python benchmarks/probe_normalisation.py
"""

from __future__ import annotations

import numpy as np

from retriever.config import EncoderConfig, FilterSpec
from retriever.datasets import load_corpus, load_qrels, load_queries
from retriever.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_run
from retriever.store import cached_embeddings

DATASET = "../shared/datasets/scifact"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    corpus, queries, qrels = load_corpus(DATASET), load_queries(DATASET), load_qrels(DATASET)
    query_ids, doc_ids = list(queries), [d.id for d in corpus.documents]
    encoder = Encoder.load("smollm2-135m", EncoderConfig(), dtype="float32")
    unembedding = encoder.unembedding()
    spectrum = UnembeddingSpectrum(unembedding)
    vh_float32 = np.linalg.svd(unembedding.astype(np.float32), full_matrices=False)[2]
    poolings = ("mean", "last")
    docs = cached_embeddings(
        encoder, [d.embedding_text for d in corpus.documents], poolings, queries=False
    )
    qs = cached_embeddings(encoder, list(queries.values()), poolings, queries=True)

    def ndcg(doc_vectors: np.ndarray, query_vectors: np.ndarray) -> float:
        scores = query_vectors @ doc_vectors.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {
            q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)
        }
        return evaluate_run(qrels, run)["ndcg_at_10"]

    for pooling in poolings:
        h, q = docs[pooling], qs[pooling]
        for tau in (2, 4, 8):
            f = EmbedFilter.from_unembedding(
                spectrum, FilterSpec(tau=tau, remove_mean_direction=False)
            ).matrix
            k = 576 // tau
            start = (576 - k) // 2
            f32 = vh_float32[start : start + k]
            print(
                f"{pooling} tau {tau}: normalise(F h) as retriever does "
                f"{ndcg(unit(h @ f.T), unit(q @ f.T)):.4f} | F normalise(h), not "
                f"renormalised {ndcg(unit(h) @ f.T, unit(q) @ f.T):.4f} | float32 SVD "
                f"{ndcg(unit(h @ f32.T), unit(q @ f32.T)):.4f}"
            )


if __name__ == "__main__":
    main()
