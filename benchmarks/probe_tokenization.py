"""Checks behind the reference-gap paragraph of benchmarks/README.md (part 2).

retriever tokenizes the text alone and cuts its head and tail, so the prompt always
survives. Would tokenizing the whole prompted string, and cutting head+tail of the whole
sequence, explain the gap to the reference probe? Encodes the 283 judged-relevant
SciFact documents plus filler up to 600 documents, and all 300 queries, both ways in
float32 (about 12 minutes on 2 cores), and scores each on that sub-collection.

    .venv/bin/python benchmarks/probe_tokenization.py
"""

from __future__ import annotations

import numpy as np
import torch

from retriever.config import PROMPTS, EncoderConfig, FilterSpec
from retriever.datasets import load_corpus, load_qrels, load_queries
from retriever.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encoder import Encoder, _Prepared, head_tail
from retriever.evaluation import evaluate_run

DATASET = "../shared/datasets/scifact"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    corpus, queries, qrels = load_corpus(DATASET), load_queries(DATASET), load_qrels(DATASET)
    gold = {d for judged in qrels.values() for d in judged}
    docs = [d for d in corpus.documents if d.id in gold]
    docs += [d for d in corpus.documents if d.id not in gold][: 600 - len(docs)]
    doc_ids, texts = [d.id for d in docs], [d.embedding_text for d in docs]
    query_ids, query_texts = list(queries), list(queries.values())
    encoder = Encoder.load("smollm2-135m", EncoderConfig(), dtype="float32")
    spectrum = UnembeddingSpectrum(encoder.unembedding())

    def whole_string(batch: list[str]) -> list[_Prepared]:
        prepared = []
        for text in batch:
            prompted = PROMPTS["prompteol"].format(text=text)
            ids = head_tail(list(encoder.tokenizer(prompted)["input_ids"]), 256)
            prepared.append(_Prepared(ids, 0, len(ids)))
        return prepared

    @torch.inference_mode()
    def encode(prepared: list[_Prepared]) -> dict[str, np.ndarray]:
        out = {p: np.zeros((len(prepared), 576), np.float32) for p in ("mean", "last")}
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i].ids))
        for lo in range(0, len(order), 16):
            rows = order[lo : lo + 16]
            batch = [prepared[i] for i in rows]
            pooled = encoder._pool_batch(encoder.model.base_model, batch, ("mean", "last"))
            for pooling, vectors in pooled.items():
                out[pooling][rows] = vectors
        return out

    def ndcg(doc_vectors: np.ndarray, query_vectors: np.ndarray) -> float:
        scores = query_vectors @ doc_vectors.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {
            q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)
        }
        return evaluate_run(qrels, run)["ndcg_at_10"]

    ours = encode(encoder._prepare(texts, "")), encode(encoder._prepare(query_texts, ""))
    joint = encode(whole_string(texts)), encode(whole_string(query_texts))
    print(f"{len(docs)} documents ({len(gold & set(doc_ids))} judged relevant)")
    for pooling in ("mean", "last"):
        cosine = np.sum(unit(ours[0][pooling]) * unit(joint[0][pooling]), axis=1)
        print(
            f"{pooling}: cosine text-only vs whole-string, documents: mean "
            f"{cosine.mean():.5f} min {cosine.min():.5f}"
        )
        for tau in (1, 2, 4, 8):
            f = EmbedFilter.from_unembedding(
                spectrum, FilterSpec(tau=tau, remove_mean_direction=False)
            )
            a = ndcg(f.transform(ours[0][pooling]), f.transform(ours[1][pooling]))
            b = ndcg(f.transform(joint[0][pooling]), f.transform(joint[1][pooling]))
            print(f"  tau {tau}: text-only tokenization {a:.4f} | whole-string {b:.4f}")


if __name__ == "__main__":
    main()
