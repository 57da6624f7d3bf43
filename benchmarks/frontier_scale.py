"""The frontier's approximate indexes at 10^5 and 10^6 vectors generated from SciFact.

Raw SciFact document embeddings (SmolLM2-135M, PromptEOL, mean pooling) seed a
smoothed bootstrap: each synthetic embedding is a real one plus Gaussian noise shaped by
the real embeddings' covariance, its scale calibrated so that synthetic vectors lie as
close to their nearest real document as real documents lie to theirs
(retriever.evaluation.bench.frontier_scale says why that makes recall meaningful). The 300 real test
queries search them through the same filter. Per size and filter: exact Flat float32 (the
reference for recall and for the speed-up), then each index type x storage, built once,
saved and opened as a Searcher opens it, and measured at each search setting of its span.
Each measured index's rows are kept in OUT/frontier-scale-rows.partial.jsonl, so a run
that stops resumes where it stopped, on the same machine with the same settings.

    python benchmarks/frontier_scale.py --out benchmarks/results/frontier-scale
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report

from retriever.core.spec import DEFAULT_MODEL, EncoderConfig
from retriever.core.threads import numpy_blas_on_one_thread
from retriever.data.datasets import load_qrels, load_queries, scan_corpus
from retriever.encode.embedfilter import UnembeddingSpectrum
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.frontier import MeasuredRows, exact_top, projection
from retriever.evaluation.bench.frontier_scale import (
    ScaleRow,
    calibrate_spread,
    neighbourhoods,
    scale_rows,
    synthetic_embeddings,
)
from retriever.evaluation.bench.run import BENCH_STORE
from retriever.evaluation.intervals import MET, MISSED, WITHIN_NOISE, RatioInterval
from retriever.evaluation.metrics import judged_queries
from retriever.store.encoding import cached_embeddings, encode_corpus

SPANS = {"Flat": [{}], "HNSW": "efSearch", "IVF": "nprobe"}
# Rows measured so far: a stopped run resumes from them (frontier.MeasuredRows).
PARTIAL_ROWS = "frontier-scale-rows.partial.jsonl"
# The RaBitQ goal at 10^6: recall@10 at least this, RAM at most int8's divided by
# RAM_SHARE, batched QPS at least int8's divided by QPS_SHARE.
RECALL_GOAL, RAM_SHARE, QPS_SHARE = 0.95, 3, 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--filters", default="embedfilter-nomean:2", help="NAME:TAU list")
    parser.add_argument("--index-types", default="HNSW32,IVF1024")
    parser.add_argument(
        "--storages",
        default="float32,int8,binary,binary+rescore,rabitq1,rabitq2,rabitq4,rabitq1+rescore,rabitq2+rescore",
    )
    parser.add_argument("--nprobes", default="16,64,128")
    parser.add_argument("--ef-searches", default="64,256,1024,4096")
    parser.add_argument(
        "--rescore",
        default="16",
        help="rescore depths (list): a search setting, measured on the same index",
    )
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def real_inputs(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, UnembeddingSpectrum, dict[str, Any]]:
    """Raw document embeddings from the SciFact store, raw test-query embeddings, the
    unembedding spectrum, and the machine record of the encoder that made them."""
    config = EncoderConfig(prompt="prompteol", pooling="mean", max_length=256)
    encoder = Encoder.load(args.model, config, dtype=args.dtype, batch_size=16)
    store = encode_corpus(encoder, scan_corpus(args.dataset), **BENCH_STORE)
    documents = store.read("mean")
    queries = judged_queries(load_queries(args.dataset), load_qrels(args.dataset, "test"))
    raw_queries = cached_embeddings(
        encoder,
        list(queries.values()),
        ["mean"],
        queries=True,
        precision=BENCH_STORE["precision"],
        show_progress=False,
    )["mean"]
    spectrum = UnembeddingSpectrum(encoder.unembedding())
    return documents, np.asarray(raw_queries), spectrum, encoder_machine_record(encoder)


def spans_of(index_type: str, args: argparse.Namespace) -> list[dict[str, int]]:
    kind = index_type.rstrip("0123456789")
    values = {"HNSW": args.ef_searches, "IVF": args.nprobes}.get(kind)
    if values is None:
        return [{}]
    return [{SPANS[kind]: int(v)} for v in values.split(",")]


def size_rows(
    n: int,
    real: np.ndarray,
    queries: np.ndarray,
    spectrum: Any,
    args: argparse.Namespace,
    generation: dict[str, Any],
    measured: MeasuredRows,
) -> list[dict[str, Any]]:
    """Every row of one collection size; ``generation`` gains how the vectors were made
    (calibrated once) and how their neighbourhoods compare with the real collection's."""
    rows: list[dict[str, Any]] = []
    for entry in args.filters.split(","):
        name, tau = entry.split(":")
        embed_filter = projection(spectrum, name, float(tau))
        if "spread" not in generation:
            generation.update(calibrate_spread(real, embed_filter, seed=args.seed))
        made = synthetic_embeddings(real, n, generation["spread"], seed=args.seed)
        vectors = np.concatenate([embed_filter.transform(chunk) for chunk in made])
        filtered_queries = embed_filter.transform(queries)
        generation["neighbourhoods"][f"{n:,} vectors, {name} tau {tau}"] = neighbourhoods(
            embed_filter.transform(real), vectors, filtered_queries, seed=args.seed
        )
        labels = {"size": n, "filter": name, "tau": float(tau), "dim": embed_filter.dim}
        rows += filter_rows(vectors, filtered_queries, labels, args, measured)
        del vectors
    return rows


def filter_rows(
    vectors: np.ndarray,
    queries: np.ndarray,
    labels: dict[str, Any],
    args: argparse.Namespace,
    measured: MeasuredRows,
) -> list[dict[str, Any]]:
    """Exact Flat float32 first (with the rate it scans the vectors at), then every index
    type x storage, each with its speed-up over that Flat: one query at a time (p50) and
    batched (QPS), both from this run. Rows already in ``measured`` are not measured again."""
    exact = exact_top(queries, vectors, 10)

    def rows_of(row: ScaleRow, spans: list[dict[str, int]]) -> list[dict[str, Any]]:
        name = (
            f"{labels['size']}-{labels['filter']}-{labels['tau']:g}-{row.index_type}-{row.storage}"
        )
        if name not in measured.rows:
            found = scale_rows(
                vectors,
                queries,
                exact,
                row,
                spans,
                rescores=[int(depth) for depth in args.rescore.split(",")],
                latency_queries=args.latency_queries,
            )
            measured.add(name, {"rows": found})
            logging.info("%s measured", name)
        return measured.rows[name]["rows"]

    flat = rows_of(ScaleRow("Flat", "float32"), [{}])[0]
    scanned = vectors.nbytes / 1e9
    flat["scan_gb_s_single"] = scanned / (flat["search_ms_p50"] / 1e3)
    flat["scan_gb_s_batched"] = scanned * flat["batch_qps"]
    rows = [{**labels, **flat, "speedup_vs_flat": 1.0, "batch_speedup_vs_flat": 1.0}]
    for index_type in args.index_types.split(","):
        for storage in args.storages.split(","):
            for row in rows_of(ScaleRow(index_type, storage), spans_of(index_type, args)):
                rows.append(
                    {
                        **labels,
                        **row,
                        "speedup_vs_flat": flat["search_ms_p50"] / row["search_ms_p50"],
                        "batch_speedup_vs_flat": row["batch_qps"] / flat["batch_qps"],
                    }
                )
    return rows


def report_body(rows: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    generation = record["generation"]
    lines = [
        f"Model {record['model']}. Vectors generated from the {record['real']} SciFact "
        f"documents, about {rows[-1]['size'] / record['real']:.0f} per document at the "
        f"largest size (spread {generation['spread']}: median similarity to the nearest "
        f"real document {generation['similarity']:.3f}, real documents to their nearest "
        f"other one {generation['target_similarity']:.3f}); {record['queries']} real test "
        "queries; k = 10. No judgements exist for generated vectors: recall is against "
        "exact search over the same vectors, and it carries over to a real collection only "
        "as far as the neighbourhoods below match.",
        "",
        f"Goal at 10^6: {record['goal']}",
        "",
        f"RaBitQ goal at 10^6 (recall@10 at least {RECALL_GOAL}, at most 1/{RAM_SHARE} of "
        f"int8's RAM, at least 1/{QPS_SHARE} of its batched QPS):",
        "",
        *(
            f"- {key}: **{value['verdict']}**. int8: {value['int8']}. RaBitQ: {value['rabitq']}."
            for key, value in record["rabitq_goal"].items()
        ),
        *([] if record["rabitq_goal"] else ["- no RaBitQ and int8 rows at 10^6 measured"]),
        "",
        *(
            [f"Measured in {record['sittings']} sittings on this machine (the run resumed).", ""]
            if record["sittings"] > 1
            else []
        ),
        "Neighbourhoods: the similarity of the 10th nearest vector (p10 / p50 / p90), for up to "
        "1,000 documents among their own collection and for the queries.",
        "",
    ]
    lines += markdown_table(
        [
            "collection",
            "documents, real",
            "documents, generated",
            "queries, real",
            "queries, generated",
        ],
        [
            [key, *(_quantiles(value[part]) for part in NEIGHBOURHOOD_PARTS)]
            for key, value in generation["neighbourhoods"].items()
        ],
    )
    lines += ["", *(_flat_line(r) for r in rows if r["index_type"] == "Flat"), ""]
    return lines + markdown_table(ROW_HEADER, [_row_cells(r) for r in rows])


NEIGHBOURHOOD_PARTS = ("documents_real", "documents_synthetic", "queries_real", "queries_synthetic")
ROW_HEADER = [
    "vectors",
    "filter",
    "tau",
    "dim",
    "index",
    "storage",
    "search setting",
    "recall@10 vs exact",
    "p50 ms",
    "p95 ms",
    "QPS",
    "speed-up vs Flat, single / batched",
    "RAM MiB",
    "mapped MiB",
    "B/vector",
    "build s",
]


def _quantiles(values: dict[str, float]) -> str:
    return " / ".join(f"{values[q]:.3f}" for q in ("p10", "p50", "p90"))


def _flat_line(row: dict[str, Any]) -> str:
    return (
        f"- Flat float32 baseline, {row['size']:,} vectors, {row['filter']} tau "
        f"{row['tau']:g}: scans {row['scan_gb_s_single']:.1f} GB/s one query at a time "
        f"(p50 {row['search_ms_p50']:.2f} ms), {row['scan_gb_s_batched']:.1f} GB/s batched "
        f"({row['batch_qps']:.0f} QPS)."
    )


def _row_cells(r: dict[str, Any]) -> list[str]:
    return [
        f"{r['size']:,}",
        r["filter"],
        f"{r['tau']:g}",
        str(r["dim"]),
        r["index_type"],
        r["storage"],
        ", ".join(f"{k} {v}" for k, v in r["params"].items()) or "-",
        _recall(r).shown() if "recall_at_10_low" in r else f"{r['recall_at_10_vs_exact']:.3f}",
        f"{r['search_ms_p50']:.2f}",
        f"{r['search_ms_p95']:.2f}",
        f"{r['batch_qps']:.0f}",
        f"{r['speedup_vs_flat']:.1f}x / {r['batch_speedup_vs_flat']:.1f}x",
        f"{r['ram_bytes'] / 2**20:.1f}",
        f"{r['mapped_bytes'] / 2**20:.1f}",
        f"{r['bytes_per_vector']:.0f}",
        f"{r['build_seconds']:.1f}",
    ]


def goal_at_a_million(rows: list[dict[str, Any]]) -> str:
    large = [r for r in rows if r["size"] >= 1_000_000 and r["index_type"] != "Flat"]
    meeting = [
        r for r in large if r["recall_at_10_vs_exact"] >= 0.95 and r["speedup_vs_flat"] >= 20
    ]
    if not large:
        return "no row at 10^6 measured"
    if meeting:
        best = max(meeting, key=lambda r: r["speedup_vs_flat"])
        return (
            f"met by {len(meeting)} rows; fastest one query at a time: {best['index_type']} "
            f"{best['storage']} {best['params']} at tau {best['tau']:g}, recall "
            f"{best['recall_at_10_vs_exact']:.3f}, {best['speedup_vs_flat']:.1f}x faster "
            f"than Flat single-query and {best['batch_speedup_vs_flat']:.1f}x batched"
        )
    best = max(large, key=lambda r: r["recall_at_10_vs_exact"])
    return (
        f"missed; best recall {best['recall_at_10_vs_exact']:.3f} "
        f"({best['speedup_vs_flat']:.1f}x faster than Flat single-query, "
        f"{best['batch_speedup_vs_flat']:.1f}x batched)"
    )


def _recall(row: dict[str, Any]) -> RatioInterval:
    """A row's recall@10 with its interval (a row measured before intervals were kept
    has its point estimate alone)."""
    point = row["recall_at_10_vs_exact"]
    low, high = row.get("recall_at_10_low", point), row.get("recall_at_10_high", point)
    return RatioInterval(point, low, high)


def _described(row: dict[str, Any]) -> str:
    params = ", ".join(f"{k} {v}" for k, v in row["params"].items())
    return (
        f"{row['index_type']} {row['storage']} ({params}): recall "
        f"{_recall(row).shown()}, {row['ram_bytes'] / 2**20:.1f} MiB RAM, "
        f"{row['batch_qps']:.0f} QPS batched"
    )


def rabitq_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per filter at 10^6: does a RaBitQ row reach recall@10 0.95 (its whole interval)
    with at most a third of int8's RAM and at least half its batched QPS? int8's row is
    its fastest batched one that reaches 0.95 (its most recalling one if none does); RAM
    is what the index file holds, rescore vectors memory-mapped apart."""
    judged: dict[str, Any] = {}
    large = [r for r in rows if r["size"] >= 1_000_000]
    for name, tau in sorted({(r["filter"], r["tau"]) for r in large}):
        same = [r for r in large if (r["filter"], r["tau"]) == (name, tau)]
        int8 = [r for r in same if r["storage"] == "int8"]
        rabitq = [r for r in same if r["storage"].startswith("rabitq")]
        if not int8 or not rabitq:
            continue
        reached = [r for r in int8 if r["recall_at_10_vs_exact"] >= RECALL_GOAL]
        if reached:
            reference = max(reached, key=lambda r: r["batch_qps"])
        else:
            reference = max(int8, key=lambda r: r["recall_at_10_vs_exact"])
        small = [r for r in rabitq if r["ram_bytes"] * RAM_SHARE <= reference["ram_bytes"]]
        fast = [r for r in small if r["batch_qps"] * QPS_SHARE >= reference["batch_qps"]]
        # Met when a row's whole recall interval clears the goal; within noise when the
        # best a row does is span it.
        verdict, best = MISSED, max(small, key=lambda r: r["recall_at_10_vs_exact"], default=None)
        for wanted in (MET, WITHIN_NOISE):
            meeting = [r for r in fast if _recall(r).verdict(RECALL_GOAL) == wanted]
            if meeting:
                verdict, best = wanted, max(meeting, key=lambda r: r["batch_qps"])
                break
        judged[f"{name} tau {tau:g}"] = {
            "verdict": verdict,
            "int8": _described(reference),
            "rabitq": _described(best) if best else "no RaBitQ row within a third of its RAM",
            "ram_share": best["ram_bytes"] / reference["ram_bytes"] if best else None,
            "qps_share": best["batch_qps"] / reference["batch_qps"] if best else None,
        }
    return judged


@numpy_blas_on_one_thread()
def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    real, queries, spectrum, machine = real_inputs(args)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    header = {"settings": {**settings, "dataset": str(args.dataset)}, "machine": machine}
    measured = MeasuredRows(args.out / PARTIAL_ROWS, header)
    rows: list[dict[str, Any]] = []
    generation: dict[str, Any] = {"neighbourhoods": {}}
    for n in (int(size) for size in args.sizes.split(",")):
        rows += size_rows(n, real, queries, spectrum, args, generation, measured)
    record = {
        "model": args.model,
        "real": len(real),
        "queries": len(queries),
        # Sittings of one machine: a stopped run resumes from its measured rows.
        "sittings": measured.sittings,
        "generation": generation,
        "goal": goal_at_a_million(rows),
        "rabitq_goal": rabitq_goal(rows),
        "rows": rows,
    }
    write_report(
        args.out,
        "frontier-scale",
        record,
        report_body(rows, record),
        title="Compression frontier at scale",
        machine=machine,
    )
    measured.path.unlink()


if __name__ == "__main__":
    main()
