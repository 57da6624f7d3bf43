"""Checks behind the gap to the reference probe: normalisation order, SVD precision, and
how the prompted text is tokenized, each scored by nDCG@10 on SciFact.

The benchmark issue quotes a reference probe of the same setting (float32, PromptEOL, max
256 tokens); its filtered rows differ from `retriever bench`'s. Two candidate causes are
measured here, the paper's EmbedFilter (edge band, mean direction kept), both poolings:

1. Normalisation order and SVD precision, every document: ``normalise(F h)`` as the
   package does, ``F normalise(h)`` (normalised before the filter, not after), and ``F``
   taken from a float32 SVD instead of the package's float64 decomposition; tau 2, 4, 8.
2. Tokenization, on a sub-collection (the judged documents, then others up to
   --sub-collection): the text tokenized alone and cut head+tail inside the prompt (as
   the package does) against the whole prompted string tokenized in one piece and cut
   head+tail as a whole (what the prompt-free encoder does to a pre-prompted text);
   the cosine between the two encodings and nDCG@10 of each, tau 1, 2, 4, 8.

Encodings go through the embedding cache, so a rerun reads them back.

    python benchmarks/reference_gap.py --out benchmarks/results/reference-gap
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np
from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report

from retriever import EmbedFilter, Encoder, EncoderConfig, FilterSpec
from retriever.core.config import PROMPTS
from retriever.core.spec import DEFAULT_MODEL
from retriever.data.datasets import load_corpus, load_qrels, load_queries
from retriever.encode.embedfilter import UnembeddingSpectrum
from retriever.evaluation.metrics import evaluate_run
from retriever.store.encoding import cached_embeddings

POOLINGS = ("mean", "last")
NORMALISATION_KEYS = ("normalised_after_filter", "normalised_before_filter", "float32_svd")


@dataclasses.dataclass
class Collection:
    """Documents and queries with their ids, the test qrels, and pooled encodings."""

    doc_ids: list[str]
    documents: dict[str, np.ndarray]
    query_ids: list[str]
    queries: dict[str, np.ndarray]
    qrels: dict[str, dict[str, int]]

    def ndcg(self, doc_vectors: np.ndarray, query_vectors: np.ndarray) -> float:
        """nDCG@10 of exact inner-product search over the top 100."""
        scores = query_vectors @ doc_vectors.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {
            q: {self.doc_ids[j]: float(scores[i, j]) for j in top[i]}
            for i, q in enumerate(self.query_ids)
        }
        return evaluate_run(self.qrels, run)["ndcg_at_10"]

    def subset(self, keep: list[int]) -> Collection:
        return Collection(
            [self.doc_ids[i] for i in keep],
            {p: vectors[keep] for p, vectors in self.documents.items()},
            self.query_ids,
            self.queries,
            self.qrels,
        )


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def paper_filter(spectrum: UnembeddingSpectrum, tau: int) -> EmbedFilter:
    return EmbedFilter.from_unembedding(spectrum, FilterSpec(tau=tau, remove_mean_direction=False))


def normalisation(
    collection: Collection, spectrum: UnembeddingSpectrum, taus: list[int]
) -> list[dict]:
    """Per pooling and tau: the package's order, normalised first, and a float32 SVD."""
    vh_float32 = np.linalg.svd(spectrum.unembedding.astype(np.float32), full_matrices=False)[2]
    rows = []
    for pooling in POOLINGS:
        h, q = collection.documents[pooling], collection.queries[pooling]
        for tau in taus:
            f = paper_filter(spectrum, tau)
            f32 = vh_float32[f.rows]  # the same band of singular vectors, in float32
            rows.append(
                {
                    "pooling": pooling,
                    "tau": tau,
                    "normalised_after_filter": collection.ndcg(f.transform(h), f.transform(q)),
                    "normalised_before_filter": collection.ndcg(
                        unit(h) @ f.matrix.T, unit(q) @ f.matrix.T
                    ),
                    "float32_svd": collection.ndcg(unit(h @ f32.T), unit(q @ f32.T)),
                }
            )
            print(rows[-1], flush=True)
    return rows


def sub_collection(collection: Collection, size: int) -> list[int]:
    """Positions of the judged documents, then of others, up to ``size`` in all."""
    gold = {d for judged in collection.qrels.values() for d in judged}
    judged = [i for i, d in enumerate(collection.doc_ids) if d in gold]
    others = [i for i, d in enumerate(collection.doc_ids) if d not in gold]
    return judged + others[: max(0, size - len(judged))]


def whole_string(encoder: Encoder, texts: list[str], *, queries: bool) -> dict[str, np.ndarray]:
    """``texts`` with the prompt written in, encoded by the same model without a prompt of
    its own: the prompted string is tokenized in one piece and cut as a whole."""
    own = encoder.config
    prompted = [PROMPTS[own.prompt].format(text=text) for text in texts]
    encoder.config = dataclasses.replace(own, prompt="none")
    try:
        return cached_embeddings(encoder, prompted, POOLINGS, queries=queries, precision="float32")
    finally:
        encoder.config = own


def tokenization(
    collection: Collection, joint: Collection, spectrum: UnembeddingSpectrum, taus: list[int]
) -> list[dict]:
    """Per pooling and tau: nDCG@10 with the text tokenized alone and with the whole
    prompted string tokenized in one piece; the documents' cosines between the two."""
    rows = []
    for pooling in POOLINGS:
        cosine = np.sum(unit(collection.documents[pooling]) * unit(joint.documents[pooling]), 1)
        for tau in taus:
            f = paper_filter(spectrum, tau)
            ndcg = {
                name: c.ndcg(f.transform(c.documents[pooling]), f.transform(c.queries[pooling]))
                for name, c in (("text_only", collection), ("whole_string", joint))
            }
            rows.append(
                {
                    "pooling": pooling,
                    "tau": tau,
                    "document_cosine_mean": float(cosine.mean()),
                    "document_cosine_min": float(cosine.min()),
                    **{f"{name}_ndcg_at_10": value for name, value in ndcg.items()},
                }
            )
            print(rows[-1], flush=True)
    return rows


def load(args: argparse.Namespace) -> tuple[Encoder, Collection, list[str], list[str]]:
    """The encoder, the whole collection encoded as the package encodes it, and the texts
    of the documents and the queries."""
    encoder = Encoder.load(args.model, EncoderConfig(), dtype=args.dtype)
    corpus, queries = load_corpus(args.dataset), load_queries(args.dataset)
    texts = [d.embedding_text for d in corpus.documents]
    collection = Collection(
        [d.id for d in corpus.documents],
        cached_embeddings(encoder, texts, POOLINGS, queries=False, precision="float32"),
        list(queries),
        cached_embeddings(
            encoder, list(queries.values()), POOLINGS, queries=True, precision="float32"
        ),
        load_qrels(args.dataset),
    )
    return encoder, collection, texts, list(queries.values())


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checks' results, and the encoder's machine record."""
    encoder, collection, texts, query_texts = load(args)
    spectrum = UnembeddingSpectrum(encoder.unembedding())
    keep = sub_collection(collection, args.sub_collection)
    sub = collection.subset(keep)
    joint = Collection(
        sub.doc_ids,
        whole_string(encoder, [texts[i] for i in keep], queries=False),
        sub.query_ids,
        whole_string(encoder, query_texts, queries=True),
        sub.qrels,
    )
    gold = {d for judged in collection.qrels.values() for d in judged}
    record = {
        "settings": {
            "model": args.model,
            "dtype": args.dtype,
            "documents": len(collection.doc_ids),
            "queries": len(collection.query_ids),
            "sub_collection": len(keep),
            "sub_collection_judged": len(gold & set(sub.doc_ids)),
        },
        "normalisation": normalisation(collection, spectrum, [2, 4, 8]),
        "tokenization": tokenization(sub, joint, spectrum, [1, 2, 4, 8]),
    }
    return record, encoder_machine_record(encoder)


def report_body(record: dict[str, Any]) -> list[str]:
    settings = record["settings"]
    return [
        f"{settings['model']} in {settings['dtype']}, PromptEOL, max length 256, the paper's "
        f"EmbedFilter (edge band, mean direction kept); nDCG@10 over the test queries.",
        "",
        f"Normalisation order and SVD precision, all {settings['documents']:,} documents:",
        "",
        *markdown_table(
            ["pooling", "tau", "normalise(F h), as the package", "F normalise(h)", "float32 SVD"],
            (
                [r["pooling"], str(r["tau"]), *(f"{r[key]:.4f}" for key in NORMALISATION_KEYS)]
                for r in record["normalisation"]
            ),
        ),
        "",
        f"Tokenization, {settings['sub_collection']:,} documents "
        f"({settings['sub_collection_judged']:,} judged relevant):",
        "",
        *markdown_table(
            ["pooling", "tau", "cosine mean", "cosine min", "text alone", "whole string"],
            (
                [
                    r["pooling"],
                    str(r["tau"]),
                    f"{r['document_cosine_mean']:.5f}",
                    f"{r['document_cosine_min']:.5f}",
                    f"{r['text_only_ndcg_at_10']:.4f}",
                    f"{r['whole_string_ndcg_at_10']:.4f}",
                ]
                for r in record["tokenization"]
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT, help="BEIR dataset folder")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias or folder (default: %(default)s)"
    )
    parser.add_argument("--dtype", default="float32", help="weights dtype (default: %(default)s)")
    parser.add_argument(
        "--sub-collection",
        type=int,
        default=600,
        metavar="N",
        help="documents of the tokenization check: the judged ones, then others up to N "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", default="benchmarks/results/reference-gap", help="results folder")
    args = parser.parse_args()
    record, machine = measure(args)
    write_report(
        args.out,
        "reference_gap",
        record,
        report_body(record),
        title="Against the reference probe: normalisation, SVD precision, tokenization",
        machine=machine,
    )


if __name__ == "__main__":
    main()
