"""``retriever bench``: EmbedFilter against the unfiltered index and fitted baselines.

The corpus and queries are encoded once per setting (prompt x pooling; the cache makes
reruns free), then every variant (filter band x tau, baselines, index types) is built,
searched and scored in the same run, so ratios to the unfiltered row compare numbers
measured side by side. Writes ``results.json`` (one row per variant), ``results.md``,
``plot.png`` and gzipped TREC runs under ``runs/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retriever.backends import BackendSpec, FaissBackend, build_in_memory
from retriever.baselines import BASELINES, fit_baseline
from retriever.config import BANDS, FUSIONS, EncoderConfig, FilterSpec, SparseSpec
from retriever.datasets import load_corpus, load_qrels, load_queries, scan_corpus
from retriever.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encoder import Encoder
from retriever.errors import RetrieverError
from retriever.evaluation import (
    Run,
    evaluate_run,
    judged_queries,
    median_seconds,
    percentiles_ms,
    time_each,
    write_trec_run,
)
from retriever.faiss_gpu import GpuOptions
from retriever.faiss_install import faiss
from retriever.fusion import rank_candidates, ranked_lists
from retriever.lens import TokenLens, alignment_metrics
from retriever.lexical import BM25Index
from retriever.manifest import folder_bytes, library_versions
from retriever.sparse import KeyTokenIndex
from retriever.store import cached_embeddings, encode_corpus
from retriever.threads import numpy_blas_on_one_thread
from retriever.tuning import cross_validate_fusion

logger = logging.getLogger(__name__)


class Projection(Protocol):
    @property
    def dim(self) -> int: ...

    def transform(self, embeddings: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BenchSettings:
    taus: tuple[float, ...] = (1, 2, 4, 8)
    bands: tuple[str, ...] = ("edge", "head", "tail")
    baselines: tuple[str, ...] = BASELINES
    index_types: tuple[str, ...] = ("Flat",)
    # Also measure this project's refinement (edge band, mean direction removed).
    mean_direction: bool = True
    # Key-token sparse rows (one per unfiltered / edge / nomean variant), BM25, and
    # hybrids of the best dense variant (nomean, else edge) at `hybrid_tau` with each,
    # fused every way at fixed settings and with the setting chosen by `cv_folds`-fold
    # cross-validation over the queries (retriever.tuning).
    sparse: bool = True
    sparse_spec: SparseSpec = field(default_factory=SparseSpec)
    bm25: bool = True
    hybrid_tau: float = 2
    fusions: tuple[str, ...] = FUSIONS
    cv_folds: int = 5
    alignment: bool = True
    k: int = 100
    fit_sample: int = 100_000
    latency_queries: int = 100
    warmup: int = 5
    seed: int = 0
    # Where FAISS indexes are built and searched; each row records where it ran.
    gpu: GpuOptions = field(default_factory=GpuOptions)

    def __post_init__(self) -> None:
        for band in self.bands:
            if band not in BANDS:
                raise RetrieverError(f"unknown band {band!r}; choose from {', '.join(BANDS)}")
        for baseline in self.baselines:
            if baseline not in BASELINES:
                raise RetrieverError(
                    f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}"
                )
        for tau in self.taus:
            FilterSpec(tau=tau)  # validates the range
        for fusion in self.fusions:
            if fusion not in FUSIONS:
                raise RetrieverError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        for index_type in self.index_types:
            parse_index_type(index_type)  # validates the backend and its type
        if parse_index_type(self.index_types[0]).kind != "faiss":
            raise RetrieverError(
                "the first --index-types entry is the hybrids' dense index and the base of the "
                f"ratios: give a FAISS type first (got {self.index_types[0]!r})"
            )


@dataclass
class Variant:
    method: str
    band: str | None
    tau: float
    projection: Projection = field(repr=False)


def build_variants(
    spectrum: UnembeddingSpectrum, documents: np.ndarray, settings: BenchSettings
) -> list[Variant]:
    """The unfiltered row, then for each tau > 1 every band, the refinement and baselines."""
    rng = np.random.default_rng(settings.seed)
    sample_rows = rng.choice(
        len(documents), size=min(len(documents), settings.fit_sample), replace=False
    )
    sample = documents[np.sort(sample_rows)]
    variants = [
        Variant(
            "unfiltered",
            None,
            1,
            EmbedFilter.from_unembedding(spectrum, FilterSpec(tau=1, remove_mean_direction=False)),
        )
    ]
    for tau in settings.taus:
        spec = FilterSpec(tau=tau)
        if settings.mean_direction:
            refined = FilterSpec(tau=tau, remove_mean_direction=True)
            variants.append(
                Variant(
                    "embedfilter-nomean",
                    "edge",
                    tau,
                    EmbedFilter.from_unembedding(spectrum, refined),
                )
            )
        if tau == 1:
            continue
        for band in settings.bands:
            banded = FilterSpec(tau=tau, band=band, seed=settings.seed, remove_mean_direction=False)
            variants.append(
                Variant("embedfilter", band, tau, EmbedFilter.from_unembedding(spectrum, banded))
            )
        k = spec.kept_dims(spectrum.model_dim)
        for method in settings.baselines:
            variants.append(
                Variant(method, None, tau, fit_baseline(method, sample, k, seed=settings.seed))
            )
    return variants


@dataclass
class Retrieval:
    """One retriever over every query: its ranked lists, the median seconds of the batched
    search, one call per latency query, and its index's bytes and build seconds."""

    ranked: list[list[tuple[int, float]]]
    batch_seconds: float
    single: list[Callable[[], Any]]
    index_bytes: int
    build_seconds: float
    # Single-query latency already measured (a backend closed after measuring cannot be
    # called again); None: measure ``single`` when scoring.
    single_ms: dict[str, float] | None = None
    # Where the searches that were timed ran: "CPU", "GPU 0 (one GPU)", "CPU (reason)".
    ran_on: str = "CPU"


def _timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    built = build()
    return built, time.perf_counter() - started


def _saved_bytes(save: Callable[[Path], Any]) -> int:
    """Bytes on disk of what ``save(folder)`` writes."""
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder) / "part")
        return folder_bytes(Path(folder) / "part")


def parse_index_type(index_type: str) -> BackendSpec:
    """``TYPE`` (FAISS) or ``milvus:TYPE`` (Milvus Lite) as a backend spec."""
    kind, _, factory = index_type.rpartition(":")
    return BackendSpec(kind=kind or "faiss", index_type=factory)


def dense_retrieval(
    doc_vectors: np.ndarray, query_vectors: np.ndarray, index_type: str, settings: BenchSettings
) -> Retrieval:
    """One dense index through the backend interface, searched and measured in place."""
    spec = dataclasses.replace(parse_index_type(index_type), use_gpu=settings.gpu)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        backend, build_seconds = _timed_build(
            lambda: build_in_memory(spec, np.ascontiguousarray(doc_vectors), folder)
        )
        k = min(settings.k, len(doc_vectors))
        results, seconds = median_seconds(lambda: backend.search(query_vectors, k))
        single = [
            lambda v=v: backend.search(v[None], k)
            for v in query_vectors[: settings.latency_queries]
        ]
        # Timed now, while the backend is open (the row's latency comes from these calls).
        timed = percentiles_ms(time_each(single, settings.warmup))
        ran_on = backend.placement.where if isinstance(backend, FaissBackend) else spec.kind
        backend.save(folder)
        nbytes = folder_bytes(folder)
    return Retrieval(
        ranked_lists([results], k), seconds, single, nbytes, build_seconds, timed, ran_on
    )


def sparse_retrieval(
    lens: TokenLens,
    doc_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    query_token_ids: list[list[int]],
    spec: SparseSpec,
    settings: BenchSettings,
) -> Retrieval:
    """The key-token index of ``lens``'s filter; query time includes building the query."""
    index, build_seconds = _timed_build(
        lambda: KeyTokenIndex.build(
            lens, lens.vectors(doc_embeddings, spec.space), spec, show_progress=False
        )
    )
    k = min(settings.k, index.num_documents)
    query_vectors = lens.vectors(query_embeddings, spec.space)

    def search(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        matrix = index.query_matrix(lens, query_vectors[rows], query_token_ids[rows])
        return index.search(matrix, k)

    results, seconds = median_seconds(lambda: search(slice(None)))
    single = [
        lambda i=i: search(slice(i, i + 1))
        for i in range(min(settings.latency_queries, len(query_vectors)))
    ]
    nbytes = _saved_bytes(index.save)
    return Retrieval(ranked_lists([results], k), seconds, single, nbytes, build_seconds)


def bm25_retrieval(
    doc_texts: list[str], query_texts: list[str], settings: BenchSettings
) -> Retrieval:
    index, build_seconds = _timed_build(lambda: BM25Index.build(doc_texts))
    k = min(settings.k, len(doc_texts))
    results, seconds = median_seconds(lambda: index.search(query_texts, k))
    single = [lambda t=t: index.search([t], k) for t in query_texts[: settings.latency_queries]]
    nbytes = _saved_bytes(index.save)
    return Retrieval(ranked_lists([results], k), seconds, single, nbytes, build_seconds)


def hybrid_retrieval(
    dense: Retrieval, other: Retrieval, fusion: str, settings: BenchSettings
) -> Retrieval:
    """Fuse two retrievers' lists; latency adds both searches and the fusion."""
    both = [[dict(found) for found in part.ranked] for part in (dense, other)]
    ranked, fuse_seconds = median_seconds(lambda: rank_candidates(both, settings.k, fusion))
    single = [
        lambda d=d, o=o: ranked_lists([d(), o()], settings.k, fusion)
        for d, o in zip(dense.single, other.single, strict=True)
    ]
    return Retrieval(
        ranked,
        dense.batch_seconds + other.batch_seconds + fuse_seconds,
        single,
        dense.index_bytes + other.index_bytes,
        dense.build_seconds + other.build_seconds,
    )


def score_retrieval(
    retrieval: Retrieval,
    labels: dict[str, Any],
    query_ids: list[str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
) -> tuple[dict[str, Any], Run]:
    """One results row (``labels`` first) and the run, from a retriever's lists and timings."""
    run = {
        qid: {doc_ids[row]: score for row, score in found}
        for qid, found in zip(query_ids, retrieval.ranked, strict=True)
    }
    single = retrieval.single_ms or percentiles_ms(time_each(retrieval.single, settings.warmup))
    return {
        **labels,
        **evaluate_run(qrels, run),
        "search_ms_p50": single["p50"],
        "search_ms_p95": single["p95"],
        "batch_qps": len(query_ids) / retrieval.batch_seconds,
        "index_bytes": retrieval.index_bytes,
        "build_seconds": retrieval.build_seconds,
        "ran_on": retrieval.ran_on,
    }, run


def measure_variant(
    variant: Variant,
    index_type: str,
    documents: np.ndarray,
    queries: np.ndarray,
    query_ids: list[str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
) -> tuple[dict[str, Any], Run]:
    retrieval = dense_retrieval(
        variant.projection.transform(documents),
        variant.projection.transform(queries),
        index_type,
        settings,
    )
    labels = {
        "family": "dense",
        "method": variant.method,
        "source": None,
        "band": variant.band,
        "tau": variant.tau,
        "dim": variant.projection.dim,
        "index_type": index_type,
        "fusion": None,
    }
    return score_retrieval(retrieval, labels, query_ids, doc_ids, qrels, settings)


@dataclass
class LexicalInputs:
    """What the sparse and BM25 rows need beyond the embeddings, shared across settings."""

    tokenizer: Any
    query_token_ids: list[list[int]]
    bm25: Retrieval | None


def _sparse_and_hybrid_rows(
    spectrum: UnembeddingSpectrum,
    variants: list[Variant],
    documents: np.ndarray,
    queries: np.ndarray,
    query_ids: list[str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
    lexical: LexicalInputs,
) -> list[tuple[dict[str, Any], Run]]:
    """Key-token sparse rows from the unfiltered, edge and nomean variants; BM25; and the
    best dense variant at ``hybrid_tau`` (nomean when measured, else edge) fused with its
    sparse index and with BM25: at fixed settings, and cross-validated."""
    scored = []

    def add(retrieval: Retrieval, **labels: Any) -> None:
        labels = {"band": None, "tau": None, "dim": None, "source": None, "fusion": None} | labels
        scored.append(score_retrieval(retrieval, labels, query_ids, doc_ids, qrels, settings))

    spec = settings.sparse_spec
    kind = f"keytokens K={spec.doc_tokens} M={spec.query_tokens}"
    hybrid_parts: dict[str, Retrieval] = {}
    for variant in variants:
        is_edge = variant.method == "embedfilter" and variant.band == "edge"
        if not settings.sparse or not (
            variant.method in ("unfiltered", "embedfilter-nomean") or is_edge
        ):
            continue
        space = "raw" if variant.method == "unfiltered" else "filtered"
        lens = TokenLens(spectrum.unembedding, variant.projection, lexical.tokenizer)
        sparse = sparse_retrieval(
            lens,
            documents,
            queries,
            lexical.query_token_ids,
            SparseSpec(spec.doc_tokens, spec.query_tokens, space),
            settings,
        )
        add(
            sparse,
            family="sparse",
            method="keytokens",
            source=variant.method,
            band=variant.band,
            tau=variant.tau,
            dim=variant.projection.dim,
            index_type=kind,
        )
        hybrid_method = "embedfilter-nomean" if settings.mean_direction else "embedfilter"
        if (
            variant.method == hybrid_method
            and variant.band in ("edge", None)
            and variant.tau == settings.hybrid_tau
        ):
            hybrid_parts["keytokens"] = sparse
            hybrid_parts["dense"] = dense_retrieval(
                variant.projection.transform(documents),
                variant.projection.transform(queries),
                settings.index_types[0],
                settings,
            )
            hybrid_variant = variant
    if lexical.bm25 is not None:
        add(lexical.bm25, family="lexical", method="bm25", index_type="bm25s")
        hybrid_parts["bm25"] = lexical.bm25
    if "dense" in hybrid_parts:
        for other in ("keytokens", "bm25"):
            if other not in hybrid_parts:
                continue
            labels = {
                "family": "hybrid",
                "method": f"dense+{other}",
                "source": hybrid_variant.method,
                "band": hybrid_variant.band,
                "tau": hybrid_variant.tau,
                "dim": hybrid_variant.projection.dim,
                "index_type": f"{settings.index_types[0]} + {other}",
            }
            dense, second = hybrid_parts["dense"], hybrid_parts[other]
            fixed = {f: hybrid_retrieval(dense, second, f, settings) for f in settings.fusions}
            for fusion, retrieval in fixed.items():
                add(retrieval, **labels, fusion=fusion)
            if settings.cv_folds:
                # Timed like the weighted hybrid: one fusion per query, whatever it picks.
                timed = fixed.get("weighted") or hybrid_retrieval(
                    dense, second, "weighted", settings
                )
                retrieval, folds = cross_validated_retrieval(
                    dense, second, timed, query_ids, doc_ids, qrels, settings
                )
                fusion = f"cv-{settings.cv_folds}fold"
                add(retrieval, **labels, fusion=fusion, cv_folds=folds)
    return scored


def cross_validated_retrieval(
    dense: Retrieval,
    other: Retrieval,
    timed: Retrieval,
    query_ids: list[str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
) -> tuple[Retrieval, list[dict[str, Any]]]:
    """The two lists fused with the setting k-fold cross-validation picks per fold (see
    retriever.tuning). It costs one fusion per query like the fixed-setting hybrids, so
    it reports ``timed``'s latency (the weighted one) and bytes."""
    candidates = [
        [{doc_ids[row]: score for row, score in found} for found in part.ranked]
        for part in (dense, other)
    ]
    chosen = cross_validate_fusion(
        query_ids, *candidates, qrels, folds=settings.cv_folds, k=settings.k, seed=settings.seed
    )
    row_of = {doc_id: row for row, doc_id in enumerate(doc_ids)}
    ranked = [
        [(row_of[doc], score) for doc, score in chosen.run.get(query_id, {}).items()]
        for query_id in query_ids
    ]
    folds = [{**fold, "fold": n} for n, fold in enumerate(chosen.folds)]
    return (
        Retrieval(
            ranked, timed.batch_seconds, timed.single, timed.index_bytes, timed.build_seconds
        ),
        folds,
    )


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


def query_encoding_ms(
    encoder: Encoder, texts: Sequence[str], settings: BenchSettings
) -> dict[str, float]:
    """Live single-query encoding latency: the LLM forward that every variant pays alike."""
    calls = [lambda t=t: encoder.encode_queries([t]) for t in texts[: settings.latency_queries]]
    return percentiles_ms(time_each(calls, settings.warmup))


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


def _judged_split(
    dataset: str | Path, split: str
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The split's judged queries and their judgements, each file read once."""
    qrels = load_qrels(dataset, split)
    queries = judged_queries(load_queries(dataset), qrels)
    return queries, {q: dict(d) for q, d in qrels.items() if q in queries}


@numpy_blas_on_one_thread()
def run_bench(
    dataset: str | Path,
    out: str | Path,
    *,
    model: str,
    prompts: Sequence[str] = ("prompteol",),
    poolings: Sequence[str] = ("mean",),
    max_length: int = 256,
    dtype: str = "auto",
    device: str | None = None,
    batch_size: int = 16,
    split: str = "test",
    limit: int | None = None,
    settings: BenchSettings | None = None,
    command: str = "",
) -> list[dict[str, Any]]:
    """Benchmark every variant for every (prompt, pooling) setting; returns the rows."""
    settings = settings or BenchSettings()
    out = Path(out)
    # The run files are this run's: a previous run's rows (other variants) must not linger
    # beside results.json, which lists exactly the ones written now.
    shutil.rmtree(out / "runs", ignore_errors=True)
    corpus = load_corpus(dataset, limit=limit)
    queries, qrels = _judged_split(dataset, split)
    query_ids, query_texts = list(queries), list(queries.values())
    doc_ids = [d.id for d in corpus.documents]
    doc_texts = [d.embedding_text for d in corpus.documents]

    bm25 = bm25_retrieval(doc_texts, query_texts, settings) if settings.bm25 else None
    rows: list[dict[str, Any]] = []
    alignment: list[dict[str, Any]] = []
    for prompt in prompts:
        config = EncoderConfig(prompt=prompt, pooling=poolings[0], max_length=max_length)
        encoder = Encoder.load(model, config, dtype=dtype, device=device, batch_size=batch_size)
        spectrum = UnembeddingSpectrum(encoder.unembedding())
        # The same store `retriever index` fills: a benchmark after a build (or the other
        # way round) encodes nothing again.
        store = encode_corpus(encoder, scan_corpus(dataset, limit))
        documents = {pooling: store.read(pooling) for pooling in poolings}
        query_embeddings = cached_embeddings(
            encoder, query_texts, poolings, queries=True, show_progress=False
        )
        lexical = LexicalInputs(
            encoder.tokenizer, encoder.text_token_ids(query_texts, queries=True), bm25
        )
        # The documents' literal tokens depend on the prompt's length, not on the pooling.
        doc_token_ids = encoder.text_token_ids(doc_texts) if settings.alignment else []
        for pooling in poolings:
            encoder.config = EncoderConfig(prompt=prompt, pooling=pooling, max_length=max_length)
            encode_ms = query_encoding_ms(encoder, query_texts, settings)
            setting_rows = _bench_setting(
                spectrum,
                documents[pooling],
                query_embeddings[pooling],
                queries,
                doc_ids,
                qrels,
                settings,
                out,
                tag=f"{prompt}-{pooling}",
                lexical=lexical,
            )
            if settings.alignment:
                for entry in alignment_report(
                    spectrum,
                    encoder.tokenizer,
                    documents[pooling],
                    doc_token_ids,
                    settings,
                ):
                    alignment.append({"prompt": prompt, "pooling": pooling, **entry})
            for row in setting_rows:
                row.update(
                    prompt=prompt,
                    pooling=pooling,
                    model=model,
                    dtype=str(encoder.dtype).removeprefix("torch."),
                    encode_ms_p50=encode_ms["p50"],
                    encode_ms_p95=encode_ms["p95"],
                )
            rows += setting_rows
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "dataset": str(dataset),
        "documents": len(doc_ids),
        "queries": len(query_ids),
        "split": split,
        "model": model,
        "max_length": max_length,
        "weights_sha256": encoder.resolved.weights_sha256,
        "machine": f"{platform.machine()}, {faiss.omp_get_max_threads()} threads",
        "versions": library_versions(),
    }
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if alignment:
        (out / "alignment.json").write_text(json.dumps(alignment, indent=2) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(rows, meta, alignment))
    plot_results(rows, out / "plot.png")
    logger.info("benchmark written to %s", out)
    return rows


def _bench_setting(
    spectrum: UnembeddingSpectrum,
    documents: np.ndarray,
    queries: np.ndarray,
    query_texts: dict[str, str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
    out: Path,
    tag: str,
    lexical: LexicalInputs | None = None,
) -> list[dict[str, Any]]:
    query_ids = list(query_texts)
    rows = []
    variants = build_variants(spectrum, documents, settings)
    for variant in variants:
        for index_type in settings.index_types:
            row, run = measure_variant(
                variant, index_type, documents, queries, query_ids, doc_ids, qrels, settings
            )
            name = f"{tag}-{variant.method}-{variant.band or 'na'}-tau{variant.tau:g}-{index_type}"
            name = name.replace(",", "_").replace(":", "-")
            write_trec_run(run, out / "runs" / f"{name}.trec.gz", tag=name)
            row["run_file"] = f"runs/{name}.trec.gz"
            rows.append(row)
            logger.info(
                "%-9s %-19s %-5s tau %-3g dim %-4d %-10s nDCG@10 %.4f",
                tag,
                variant.method,
                variant.band or "",
                variant.tau,
                row["dim"],
                index_type,
                row["ndcg_at_10"],
            )
    if lexical is not None:
        for row, run in _sparse_and_hybrid_rows(
            spectrum, variants, documents, queries, query_ids, doc_ids, qrels, settings, lexical
        ):
            name = "-".join(
                str(row[key]) for key in ("method", "source", "band", "tau", "fusion") if row[key]
            )
            name = f"{tag}-{name}".replace("+", "-")
            write_trec_run(run, out / "runs" / f"{name}.trec.gz", tag=name)
            row["run_file"] = f"runs/{name}.trec.gz"
            rows.append(row)
            logger.info(
                "%-9s %-19s %-19s tau %-3s %-8s nDCG@10 %.4f",
                tag,
                row["method"],
                row["source"] or "",
                row["tau"] or "",
                row["fusion"] or "",
                row["ndcg_at_10"],
            )
    first_type = settings.index_types[0]
    for row in rows:
        base = next(
            r
            for r in rows
            if r["method"] == "unfiltered"
            and r["index_type"] == (row["index_type"] if row["family"] == "dense" else first_type)
        )
        row["ndcg_ratio"] = row["ndcg_at_10"] / base["ndcg_at_10"] if base["ndcg_at_10"] else None
        row["latency_ratio"] = row["search_ms_p50"] / base["search_ms_p50"]
        row["storage_ratio"] = row["index_bytes"] / base["index_bytes"]
        if row["family"] != "dense" and row["source"]:
            # Against the dense index of the same vectors (the hybrid's dense part).
            dense = next(
                r
                for r in rows
                if r["family"] == "dense"
                and (r["method"], r["band"], r["tau"], r["index_type"])
                == (row["source"], row["band"], row["tau"], first_type)
            )
            row["share_of_dense_ndcg"] = (
                row["ndcg_at_10"] / dense["ndcg_at_10"] if dense["ndcg_at_10"] else None
            )

    unfiltered = next(r for r in rows if r["method"] == "unfiltered")
    normalised = EmbedFilter.from_unembedding(
        spectrum, FilterSpec(tau=1, remove_mean_direction=False)
    )
    beir, beir_seconds = beir_cross_check(
        normalised.transform(documents),
        normalised.transform(queries),
        query_texts,
        doc_ids,
        qrels,
        settings.k,
    )
    flat = next(
        (r for r in rows if r["method"] == "unfiltered" and r["index_type"] == "Flat"), unfiltered
    )
    ours_ms = 1000.0 / flat["batch_qps"]
    beir_ms = 1000.0 * beir_seconds / len(query_ids)
    unfiltered_check = {
        "beir_ndcg_at_10": beir["ndcg_at_10"],
        "beir_matches": abs(beir["ndcg_at_10"] - flat["ndcg_at_10"]) <= 0.001,
        "beir_search_ms_per_query": beir_ms,
        "search_ms_per_query_batched": ours_ms,
    }
    for row in rows:
        if row["method"] == "unfiltered":
            row.update(unfiltered_check)
    return rows


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def markdown_report(
    rows: list[dict[str, Any]], meta: dict[str, Any], alignment: Sequence[dict[str, Any]] = ()
) -> str:
    lines = [
        f"# Benchmark: {meta['model']} on {Path(meta['dataset']).name}",
        "",
        "Produced by:",
        "",
        "```",
        meta["command"] or "(called from Python)",
        "```",
        "",
        f"{meta['documents']} documents, {meta['queries']} judged queries ({meta['split']}), "
        f"max length {meta['max_length']}, dtype {rows[0]['dtype'] if rows else '?'}; "
        f"{meta['machine']}. Ratios are to the unfiltered row of the same setting and index "
        "type, measured in the same run. Latency: one query at a time, FAISS search only "
        "(median of up to 100 queries after warm-up); query encoding is listed per setting.",
        "",
        "Dense searches were timed on: "
        + "; ".join(
            f"{place} ({n} rows)"
            for place, n in Counter(
                r.get("ran_on", "CPU") for r in rows if r["family"] == "dense"
            ).items()
        )
        + ".",
        "",
    ]
    settings = dict.fromkeys((r["prompt"], r["pooling"]) for r in rows)
    for prompt, pooling in settings:
        everything = [r for r in rows if r["prompt"] == prompt and r["pooling"] == pooling]
        group = [r for r in everything if r["family"] == "dense"]
        head = next(r for r in group if r["method"] == "unfiltered")
        ours, beir = head["search_ms_per_query_batched"], head["beir_search_ms_per_query"]
        encode = head["encode_ms_p50"]
        verdict = "match" if head["beir_matches"] else "MISMATCH"
        lines += [
            f"## {prompt}, {pooling} pooling",
            "",
            f"Query encoding (LLM forward + filter): median {encode:.1f} ms, "
            f"p95 {head['encode_ms_p95']:.1f} ms per query.",
            "Peer cross-check: BEIR `DenseRetrievalExactSearch` on the unfiltered embeddings "
            f"gives nDCG@10 {head['beir_ndcg_at_10']:.4f} vs ours {head['ndcg_at_10']:.4f} "
            f"({verdict} to 0.001). Search per query, batched (median of 3 runs over all "
            f"queries): ours {ours:.3f} ms vs BEIR "
            f"{beir:.3f} ms (ratio {ours / beir:.3f}); end to end with query encoding, "
            f"ratio {(encode + ours) / (encode + beir):.3f}.",
            "",
            "| method | band | tau | dim | index | nDCG@10 | nDCG@100 | R@100 | nDCG ratio | "
            "search p50 ms | p95 ms | latency ratio | index bytes | storage ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            lines.append(
                f"| {r['method']} | {r['band'] or ''} | {r['tau']:g} | {r['dim']} | "
                f"{r['index_type']} | {r['ndcg_at_10']:.4f} | {r['ndcg_at_100']:.4f} | "
                f"{r['recall_at_100']:.4f} | {_ratio(r['ndcg_ratio'])} | "
                f"{r['search_ms_p50']:.3f} | {r['search_ms_p95']:.3f} | "
                f"{_ratio(r['latency_ratio'])} | {r['index_bytes']:,} | "
                f"{_ratio(r['storage_ratio'])} |"
            )
        lines.append("")
        others = [r for r in everything if r["family"] != "dense"]
        if others:
            lines += _other_rows_table(others)
        entries = [a for a in alignment if (a["prompt"], a["pooling"]) == (prompt, pooling)]
        if entries:
            lines += _alignment_table(entries)
    return "\n".join(lines)


def _other_rows_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Key-token sparse indexes (each built from the named dense variant's vectors), BM25, "
        "and hybrids of the dense index with each. *Share of dense* is nDCG@10 over the "
        "dense Flat index of the same vectors; *nDCG ratio* is over the unfiltered dense "
        "row. Search latency includes building the sparse query (its top-M aligned tokens) "
        "but not the LLM forward, which BM25 alone does without; hybrids add both searches "
        "and the fusion.",
        "",
        "| method | from | band | tau | fusion | nDCG@10 | R@100 | share of dense | "
        "nDCG ratio | search p50 ms | batch QPS | index bytes | storage ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tau = "" if r["tau"] is None else f"{r['tau']:g}"
        lines.append(
            f"| {r['method']} | {r['source'] or ''} | {r['band'] or ''} | {tau} | "
            f"{r['fusion'] or ''} | {r['ndcg_at_10']:.4f} | {r['recall_at_100']:.4f} | "
            f"{_ratio(r.get('share_of_dense_ndcg'))} | {_ratio(r['ndcg_ratio'])} | "
            f"{r['search_ms_p50']:.3f} | {r['batch_qps']:.0f} | {r['index_bytes']:,} | "
            f"{_ratio(r['storage_ratio'])} |"
        )
    return [*lines, ""]


def _alignment_table(entries: list[dict[str, Any]]) -> list[str]:
    texts = entries[0]["texts"]
    lines = [
        f"Token alignment of the {texts} documents (`retriever.lens.alignment_metrics`): "
        "Hit@10 = share of documents with one of their own words among their 10 best-aligned "
        "words; content Hit@10 = the same without stopwords and punctuation; local rate = "
        "mean share of a document's words among its |T| best-aligned; "
        "global rate = share of the collection's distinct words aligned in a document "
        "holding them; junk@10 = share of stopwords and punctuation in the top 10; "
        "displayed Hit@10 = content Hit@10 of exactly the 10 words the lens displays (whole "
        "words, no stopwords or punctuation). *raw* reads W h, the filters read W F^T F h.",
        "",
        "| embedding | band | tau | Hit@10 | content Hit@10 | local rate | global rate | "
        "junk@10 | displayed Hit@10 | top 10 tokens of the first document | "
        "displayed top 10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        example = " ".join(f"`{token.strip() or repr(token)}`" for token in e["examples"][0])
        shown = " ".join(f"`{token.strip()}`" for token in e["displayed_examples"][0])
        lines.append(
            f"| {e['space']} | {e['band'] or ''} | {e['tau']:g} | {e['hit_at_10']:.3f} | "
            f"{e['content_hit_at_10']:.3f} | {e['local_alignment_rate']:.3f} | "
            f"{e['global_alignment_rate']:.3f} | "
            f"{e['junk_at_10']:.3f} | {e['displayed_hit_at_10']:.3f} | {example} | {shown} |"
        )
    return [*lines, ""]


def _series_label(row: dict[str, Any]) -> str:
    return f"{row['method']} {row['band']}" if row["method"] == "embedfilter" else row["method"]


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """nDCG@10 and search latency against dimension, one line per method, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys((r["prompt"], r["pooling"]) for r in rows))
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), squeeze=False)
    for (prompt, pooling), (ax_ndcg, ax_latency) in zip(settings, axes, strict=True):
        group = [r for r in rows if r["prompt"] == prompt and r["pooling"] == pooling]
        flat = [r for r in group if r["index_type"] == group[0]["index_type"]]
        unfiltered = next(r for r in flat if r["method"] == "unfiltered")
        for label in dict.fromkeys(_series_label(r) for r in flat if r["method"] != "unfiltered"):
            series = sorted((r for r in flat if _series_label(r) == label), key=lambda r: r["dim"])
            dims = [r["dim"] for r in series]
            ax_ndcg.plot(dims, [r["ndcg_at_10"] for r in series], marker="o", label=label)
            ax_latency.plot(dims, [r["search_ms_p50"] for r in series], marker="o", label=label)
        for ax, key in ((ax_ndcg, "ndcg_at_10"), (ax_latency, "search_ms_p50")):
            ax.axhline(unfiltered[key], color="black", linestyle="--", label="unfiltered")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("dimension")
        ax_ndcg.set_ylabel("nDCG@10")
        ax_latency.set_ylabel(f"search ms p50 ({group[0]['index_type']})")
        ax_ndcg.set_title(f"{prompt}, {pooling} pooling: nDCG@10")
        ax_latency.set_title(f"{prompt}, {pooling} pooling: search latency")
        ax_ndcg.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@numpy_blas_on_one_thread()
def run_scaling_bench(
    dataset: str | Path,
    out: str | Path,
    *,
    model: str,
    prompt: str = "prompteol",
    pooling: str = "mean",
    max_length: int = 256,
    dtype: str = "auto",
    device: str | None = None,
    batch_size: int = 16,
    split: str = "test",
    limit: int | None = None,
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    taus: tuple[float, ...] = (1, 2, 4, 8),
    command: str = "",
    gpu: GpuOptions | None = None,
) -> list[dict[str, Any]]:
    """Search latency, QPS and bytes against N for each dimension (see retriever.scaling)."""
    from retriever.scaling import run_scaling, write_scaling_report

    queries, _ = _judged_split(dataset, split)
    config = EncoderConfig(prompt=prompt, pooling=pooling, max_length=max_length)
    encoder = Encoder.load(model, config, dtype=dtype, device=device, batch_size=batch_size)
    documents = encode_corpus(encoder, scan_corpus(dataset, limit)).read(pooling)
    query_embeddings = cached_embeddings(
        encoder, list(queries.values()), [pooling], queries=True, show_progress=False
    )[pooling]
    latency_queries = 50
    rows = run_scaling(
        documents,
        query_embeddings,
        encoder.unembedding(),
        sizes=sizes,
        taus=taus,
        latency_queries=latency_queries,
        gpu=gpu,
    )
    meta = {
        "command": command,
        "description": (
            f"{model}, {prompt} prompt, {pooling} pooling, EmbedFilter edge band; the "
            f"{len(documents)} {Path(dataset).name} document vectors tiled to N with "
            "Gaussian noise (std 0.1/sqrt(dim)) and renormalised; "
            f"{faiss.omp_get_max_threads()} threads, {platform.machine()}."
        ),
        "queries": len(query_embeddings),
        "latency_queries": latency_queries,
        "versions": library_versions(),
    }
    write_scaling_report(rows, Path(out), meta)
    return rows
