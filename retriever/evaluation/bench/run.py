"""Running the benchmark: per (prompt, pooling) setting, every variant built, searched
and scored side by side, then the reports; and the scaling run."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retriever.core.config import POOLINGS
from retriever.core.spec import FilterSpec
from retriever.core.threads import numpy_blas_on_one_thread
from retriever.data.datasets import load_corpus, load_qrels, load_queries, scan_corpus
from retriever.encode.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.checks import alignment_report, beir_cross_check
from retriever.evaluation.bench.report import markdown_report, plot_results
from retriever.evaluation.bench.rows import Scored, SettingInputs, parts_of, variant_rows
from retriever.evaluation.bench.variants import (
    BenchModel,
    BenchSettings,
    ScalingSettings,
    build_variants,
)
from retriever.evaluation.intervals import interval_fields, paired_ratio_interval
from retriever.evaluation.machine import encoder_machine_record
from retriever.evaluation.metrics import (
    PER_QUERY,
    EncodedQueries,
    encode_timed,
    judged_queries,
    per_query_metrics,
    write_per_query,
    write_trec_run,
)
from retriever.index.manifest import library_versions
from retriever.parts.dense.faiss_install import faiss
from retriever.store.embeddings import EmbeddingStore
from retriever.store.encoding import cached_embeddings, encode_corpus

logger = logging.getLogger(__name__)

# Benchmarks read float32 stores of both poolings: what their published results were
# measured from (a user's store is float16 of one pooling; the lean-store benchmark
# measures that float16 leaves nDCG@10 unchanged).
BENCH_STORE = {"poolings": POOLINGS, "precision": "float32"}


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
    model: BenchModel,
    settings: BenchSettings | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    command: str = "",
) -> list[dict[str, Any]]:
    """Benchmark every variant for every (prompt, pooling) setting of ``model``; returns
    the rows. ``command``: the command line recorded with the results."""
    settings = settings or BenchSettings()
    poolings = list(model.poolings)
    out = Path(out)
    # The run files are this run's: a previous run's rows (other variants) must not linger
    # beside results.json, which lists exactly the ones written now.
    shutil.rmtree(out / "runs", ignore_errors=True)
    queries, qrels = _judged_split(dataset, split)
    rows: list[dict[str, Any]] = []
    alignment: list[dict[str, Any]] = []
    for prompt in model.prompts:
        encoder = model.load(prompt, poolings[0])
        # The same store `retriever index` fills: a benchmark after a build (or the other
        # way round) encodes nothing again.
        store = encode_corpus(encoder, scan_corpus(dataset, limit), **BENCH_STORE)
        query_embeddings = cached_embeddings(
            encoder,
            list(queries.values()),
            poolings,
            queries=True,
            precision=BENCH_STORE["precision"],
            show_progress=False,
        )
        spectrum = UnembeddingSpectrum(encoder.unembedding())
        # The documents' literal tokens depend on the prompt's length, not on the pooling.
        doc_token_ids = _doc_token_ids(encoder, dataset, limit) if settings.alignment else []
        for pooling in poolings:
            encoder.config = model.config(prompt, pooling)
            encoded = _timed_queries(encoder, queries, query_embeddings[pooling], settings)
            setting_rows = _bench_setting(encoder, spectrum, store, encoded, qrels, settings, out)
            labels = {
                "prompt": prompt,
                "pooling": pooling,
                "model": model.name,
                "dtype": str(encoder.dtype).removeprefix("torch."),
            }
            rows += [{**row, **labels} for row in setting_rows]
            if settings.alignment:
                entries = alignment_report(
                    spectrum, encoder.tokenizer, store.read(pooling), doc_token_ids, settings
                )
                alignment += [{"prompt": prompt, "pooling": pooling, **e} for e in entries]
    meta = _meta(command, dataset, store, queries, split, model.name, model.max_length, encoder)
    write_reports(out, rows, meta, alignment, list(queries))
    return rows


def _doc_token_ids(encoder: Encoder, dataset: str | Path, limit: int | None) -> list[list[int]]:
    texts = [d.embedding_text for d in load_corpus(dataset, limit=limit).documents]
    return encoder.text_token_ids(texts)


def _timed_queries(
    encoder: Encoder, queries: dict[str, str], stored: Any, settings: BenchSettings
) -> EncodedQueries:
    """The queries with their stored embeddings (so a rerun ranks exactly as this run) and
    the live LLM forward's cost: one batch, and one query at a time."""
    timed = encode_timed(
        encoder.encode_queries,
        queries,
        warmup=settings.warmup,
        latency_queries=settings.latency_queries,
    )
    return EncodedQueries(timed.ids, timed.texts, stored, timed.batch_seconds, timed.latency_ms)


def _meta(
    command: str,
    dataset: str | Path,
    store: EmbeddingStore,
    queries: dict[str, str],
    split: str,
    model: str,
    max_length: int,
    encoder: Encoder,
) -> dict[str, Any]:
    return {
        "command": command,
        "dataset": str(dataset),
        "documents": store.count,
        "queries": len(queries),
        "split": split,
        "model": model,
        "max_length": max_length,
        "weights_sha256": encoder.resolved.weights_sha256,
        "machine": encoder_machine_record(encoder),
        "faiss_threads": faiss.omp_get_max_threads(),
        "versions": library_versions(),
    }


def write_reports(
    out: Path,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    alignment: list[dict[str, Any]],
    query_ids: list[str],
) -> None:
    """results.json, per_query.jsonl, runs.sha256, alignment.json, meta.json, results.md and
    plot.png in ``out``.

    The run files themselves are large and their scores' last digits move between reruns,
    so a repository keeps per_query.jsonl (each row's nDCG@10 per query, which the ratio
    intervals are computed from and which changes only when a ranking does) and the run
    files' checksums, not the runs.
    """
    out.mkdir(parents=True, exist_ok=True)
    plain = [{k: v for k, v in row.items() if k != PER_QUERY} for row in rows]
    (out / "results.json").write_text(json.dumps(plain, indent=2) + "\n")
    write_per_query(
        out / "per_query.jsonl", query_ids, (({"run": r["run_file"]}, r[PER_QUERY]) for r in rows)
    )
    write_run_checksums(out, rows)
    if alignment:
        (out / "alignment.json").write_text(json.dumps(alignment, indent=2) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(rows, meta, alignment))
    plot_results(rows, out / "plot.png")
    logger.info("benchmark written to %s", out)


def write_run_checksums(out: Path, rows: list[dict[str, Any]]) -> None:
    """runs.sha256, in the format ``sha256sum -c`` reads, from ``out``."""
    lines = [
        f"{hashlib.sha256((out / row['run_file']).read_bytes()).hexdigest()}  {row['run_file']}"
        for row in sorted(rows, key=lambda r: r["run_file"])
    ]
    (out / "runs.sha256").write_text("\n".join(lines) + "\n")


def _bench_setting(
    encoder: Encoder,
    spectrum: UnembeddingSpectrum,
    store: EmbeddingStore,
    queries: EncodedQueries,
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
    out: Path,
) -> list[dict[str, Any]]:
    """Every row of one (prompt, pooling) setting, with its ratios and run files."""
    documents = store.read(encoder.config.pooling)
    variants = build_variants(spectrum, documents, settings)
    # BM25 lives in the hybrids' dense variant's folder, or the unfiltered one's.
    bm25_host = next((v for v in variants if v.is_hybrid_part(settings)), variants[0])
    dense: list[Scored] = []
    others: list[Scored] = []
    tag = f"{encoder.config.prompt}-{encoder.config.pooling}"
    with tempfile.TemporaryDirectory(prefix="retriever-bench-") as scratch:
        keep = settings.keep_indexes
        folders = Path(scratch) if keep is None else Path(keep).absolute() / tag
        inputs = SettingInputs(encoder, store, queries, qrels, folders, keep is not None)
        for variant in variants:
            found = variant_rows(variant, parts_of(variant, bm25_host, settings), inputs, settings)
            dense += found[0]
            others += found[1]
            _log(tag, found[0] + found[1])
    scored = dense + sorted(others, key=_other_order)
    for row, run in scored:
        name = _run_name(tag, row)
        write_trec_run(run, out / "runs" / f"{name}.trec.gz", tag=name)
        row["run_file"] = f"runs/{name}.trec.gz"
        per_query = per_query_metrics(qrels, run)
        row[PER_QUERY] = [per_query[q]["ndcg_at_10"] for q in queries.ids]
    rows = [row for row, _ in scored]
    add_ratios(rows, settings.index_types[0])
    _add_beir_check(rows, spectrum, documents, queries, store, qrels, settings)
    return rows


def _other_order(scored: Scored) -> int:
    """Key tokens (in variant order), then BM25, then the hybrids."""
    return ("sparse", "lexical", "hybrid").index(scored[0]["family"])


def _log(tag: str, scored: list[Scored]) -> None:
    for row, _ in scored:
        logger.info(
            "%-15s %-19s %-19s %-5s tau %-3s %-10s %-8s nDCG@10 %.4f",
            tag,
            row["method"],
            row["source"] or "",
            row["band"] or "",
            "" if row["tau"] is None else f"{row['tau']:g}",
            row["index_type"],
            row["fusion"] or "",
            row["ndcg_at_10"],
        )


def _run_name(tag: str, row: dict[str, Any]) -> str:
    if row["family"] == "dense":
        name = f"{row['method']}-{row['band'] or 'na'}-tau{row['tau']:g}-{row['index_type']}"
        return f"{tag}-{name}".replace(",", "_").replace(":", "-")
    parts = (str(row[key]) for key in ("method", "source", "band", "tau", "fusion") if row[key])
    return f"{tag}-{'-'.join(parts)}".replace("+", "-")


def add_ratios(rows: list[dict[str, Any]], first_type: str) -> None:
    """Each row's nDCG (with its paired bootstrap interval over queries), latency and
    storage over the unfiltered dense row of its index type (the first type for non-dense
    rows), and a non-dense row's share of the nDCG of the dense index of the same vectors."""
    for row in rows:
        own_type = row["index_type"] if row["family"] == "dense" else first_type
        base = next(r for r in rows if r["method"] == "unfiltered" and r["index_type"] == own_type)
        row.update(_ndcg_ratio(row, base, "ndcg_ratio"))
        row["latency_ratio"] = row["search_ms_p50"] / base["search_ms_p50"]
        row["storage_ratio"] = row["index_bytes"] / base["index_bytes"]
        if row["family"] != "dense" and row["source"]:
            dense = next(
                r
                for r in rows
                if r["family"] == "dense"
                and (r["method"], r["band"], r["tau"], r["index_type"])
                == (row["source"], row["band"], row["tau"], first_type)
            )
            row.update(_ndcg_ratio(row, dense, "share_of_dense_ndcg"))


def _ndcg_ratio(row: dict[str, Any], base: dict[str, Any], name: str) -> dict[str, Any]:
    """``name`` = the row's nDCG@10 over ``base``'s, with ``name_low`` and ``name_high``:
    its 95% paired bootstrap interval over the queries (None where ``base`` scores 0)."""
    if not base["ndcg_at_10"]:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    interval = paired_ratio_interval(row[PER_QUERY], base[PER_QUERY])
    return interval_fields(interval, name)


def _add_beir_check(
    rows: list[dict[str, Any]],
    spectrum: UnembeddingSpectrum,
    documents: Any,
    queries: EncodedQueries,
    store: EmbeddingStore,
    qrels: dict[str, dict[str, int]],
    settings: BenchSettings,
) -> None:
    """BEIR's own exact search of the unfiltered embeddings, on the unfiltered rows."""
    normalised = EmbedFilter.from_unembedding(
        spectrum, FilterSpec(tau=1, remove_mean_direction=False)
    )
    doc_ids = [d.id for shard in store.shards() for d in shard.documents()]
    beir, beir_seconds = beir_cross_check(
        normalised.transform(documents),
        normalised.transform(queries.embeddings),
        dict(zip(queries.ids, queries.texts, strict=True)),
        doc_ids,
        qrels,
        settings.k,
    )
    unfiltered = next(r for r in rows if r["method"] == "unfiltered")
    flat = next(
        (r for r in rows if r["method"] == "unfiltered" and r["index_type"] == "Flat"), unfiltered
    )
    check = {
        "beir_ndcg_at_10": beir["ndcg_at_10"],
        "beir_matches": abs(beir["ndcg_at_10"] - flat["ndcg_at_10"]) <= 0.001,
        "beir_search_ms_per_query": 1000.0 * beir_seconds / len(queries.ids),
        "search_ms_per_query_batched": 1000.0 / flat["batch_qps"],
    }
    for row in rows:
        if row["method"] == "unfiltered":
            row.update(check)


@numpy_blas_on_one_thread()
def run_scaling_bench(
    dataset: str | Path,
    out: str | Path,
    model: BenchModel,
    scaling: ScalingSettings | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    command: str = "",
) -> list[dict[str, Any]]:
    """Search latency, QPS and bytes against N for each dimension (see
    retriever.evaluation.scaling), with ``model``'s first prompt and pooling."""
    from retriever.evaluation.scaling import run_scaling, write_scaling_report

    scaling = scaling or ScalingSettings()
    queries, _ = _judged_split(dataset, split)
    prompt, pooling = model.prompts[0], model.poolings[0]
    encoder = model.load(prompt, pooling)
    documents = encode_corpus(encoder, scan_corpus(dataset, limit), **BENCH_STORE).read(pooling)
    query_embeddings = cached_embeddings(
        encoder,
        list(queries.values()),
        [pooling],
        queries=True,
        precision=BENCH_STORE["precision"],
        show_progress=False,
    )[pooling]
    latency_queries = 50
    rows = run_scaling(
        documents,
        query_embeddings,
        encoder.unembedding(),
        sizes=scaling.sizes,
        taus=scaling.taus,
        latency_queries=latency_queries,
        gpu=scaling.gpu,
    )
    meta = {
        "command": command,
        "description": (
            f"{model.name}, {prompt} prompt, {pooling} pooling, EmbedFilter edge band; the "
            f"{len(documents)} {Path(dataset).name} document vectors tiled to N with "
            "Gaussian noise (std 0.1/sqrt(dim)) and renormalised; "
            f"{faiss.omp_get_max_threads()} FAISS threads."
        ),
        "machine": encoder_machine_record(encoder),
        "queries": len(query_embeddings),
        "latency_queries": latency_queries,
        "versions": library_versions(),
    }
    write_scaling_report(rows, Path(out), meta)
    return rows
