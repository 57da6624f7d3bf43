"""The compression frontier on SciFact: filter x tau x storage x index, in one run.

Every row is a real index folder built from the SciFact embedding store by the build
pipeline and searched through `retriever.Searcher` (retriever.evaluation.bench.frontier). The grid:
the unfiltered vectors (tau 1), the paper's EmbedFilter (edge band, tau 2-16) and the
default (mean direction removed, tau 1-16), each stored as float32, float16, int8, binary,
binary + int8 rescoring (M = 4 and 16), product quantization (FAISS PQ, d/6 bytes) and
RaBitQ codes of 1, 2 and 4 bits (alone and with rescoring, M = 4 and 16), in Flat, HNSW32
(efSearch 64) and IVF64 (nprobe 8); binary Flat rows with both centres (documents' mean,
zero). Search settings are fixed for the whole grid, never tuned per row on these queries.

The grid is hundreds of index builds (hours on two cores). Each measured row is kept in
OUT/frontier-rows.partial.jsonl, so a run that stops resumes where it stopped when run
again on the same machine with the same settings; the report counts its sittings.

    python benchmarks/frontier.py --out benchmarks/results/frontier
"""

from __future__ import annotations

import argparse
import logging
import tempfile
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
from retriever.evaluation.bench.frontier import (
    STORAGE_ROWS,
    FrontierInputs,
    FrontierSettings,
    MeasuredRows,
    frontier_rows,
)
from retriever.evaluation.bench.run import BENCH_STORE
from retriever.evaluation.intervals import (
    MET,
    MISSED,
    WITHIN_NOISE,
    RatioInterval,
    interval_fields,
    paired_ratio_interval,
)
from retriever.evaluation.metrics import (
    PER_QUERY,
    encode_timed,
    judged_queries,
    write_per_query,
)
from retriever.store.encoding import encode_corpus

BYTES_GOAL = 72  # 1/32 of unfiltered float32 at d = 576
# Rows measured so far: a stopped run resumes from them (frontier.MeasuredRows).
PARTIAL_ROWS = "frontier-rows.partial.jsonl"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--taus", default="1,2,4,8,16")
    parser.add_argument("--index-types", default="Flat,HNSW32,IVF64")
    parser.add_argument(
        "--storages",
        default=",".join(STORAGE_ROWS),
        help="storage rows (pq needs at least 256 documents to train its codebooks)",
    )
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def inputs_for(args: argparse.Namespace, folders: Path) -> tuple[FrontierInputs, Any]:
    """The encoder, the SciFact store (encoded once, reused), the judged test queries with
    their embeddings and encoding latency, and the raw document embeddings."""
    config = EncoderConfig(prompt="prompteol", pooling="mean", max_length=256)
    encoder = Encoder.load(args.model, config, dtype=args.dtype, batch_size=16)
    store = encode_corpus(encoder, scan_corpus(args.dataset, args.limit), **BENCH_STORE)
    qrels = load_qrels(args.dataset, "test")
    queries = judged_queries(load_queries(args.dataset), qrels)
    encoded = encode_timed(encoder.encode_queries, queries, latency_queries=args.latency_queries)
    shards = store.shards()
    documents = np.concatenate([np.asarray(s.embeddings("mean"), np.float32) for s in shards])
    doc_ids = [d.id for s in shards for d in s.documents()]
    inputs = FrontierInputs(
        encoder,
        store,
        encoded,
        {q: dict(d) for q, d in qrels.items() if q in queries},
        folders,
        documents,
        doc_ids,
    )
    return inputs, UnembeddingSpectrum(encoder.unembedding())


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's nDCG@10 over float32's with the same filter, tau and index type, with its
    paired bootstrap interval over the queries."""
    base = {(r["filter"], r["tau"], r["index_type"]): r for r in rows if r["storage"] == "float32"}
    for row in rows:
        float32 = base[(row["filter"], row["tau"], row["index_type"])]
        interval = paired_ratio_interval(row[PER_QUERY], float32[PER_QUERY])
        row.update(interval_fields(interval, "vs_float32"))


def _interval(row: dict[str, Any], name: str) -> RatioInterval:
    return RatioInterval(row[name], row[f"{name}_low"], row[f"{name}_high"])


def storage_goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The storage goals (int8 at least 0.99x float32, binary + rescore at least 0.97x),
    each row judged met, missed or within noise by its interval."""
    judged: dict[str, Any] = {}
    groups = [("int8", None, 0.99)] + [
        ("binary+rescore", m, 0.97) for m in sorted({r["rescore"] for r in rows if r["rescore"]})
    ]
    for storage, rescore, goal in groups:
        chosen = [
            r
            for r in rows
            if r["storage"] == storage and r["rescore"] == rescore and r["binary_centre"] != "zero"
        ]
        if not chosen:
            continue
        verdicts = [_interval(r, "vs_float32").verdict(goal) for r in chosen]
        low = min(chosen, key=lambda r: r["vs_float32"])
        label = storage_label({**low, "binary_centre": None})
        judged[f"{label} at least {goal}x float32"] = {
            **{v: f"{verdicts.count(v)} of {len(chosen)}" for v in (MET, WITHIN_NOISE, MISSED)},
            "lowest": _interval(low, "vs_float32").shown(),
            "lowest_row": _name(low),
        }
    return judged


def rabitq_against_sign_codes(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """RaBitQ 1 bit against sign codes (binary, documents' centre) of the same filter and
    tau, Flat: each its paired ratio with the interval; beating them means the whole
    interval lies above 1."""

    def flat(storage: str) -> dict[tuple[str, float], dict[str, Any]]:
        return {
            (r["filter"], r["tau"]): r
            for r in rows
            if r["storage"] == storage
            and r["index_type"] == "Flat"
            and r["binary_centre"] in (None, "documents")
        }

    rabitq, sign = flat("rabitq1"), flat("binary")
    pairs = sorted(set(rabitq) & set(sign))
    if not pairs:
        return None
    ratios = {
        f"{name} tau {tau:g}": paired_ratio_interval(
            rabitq[(name, tau)][PER_QUERY], sign[(name, tau)][PER_QUERY]
        )
        for name, tau in pairs
    }
    beaten = [key for key, ratio in ratios.items() if ratio.verdict(1.0) == MET]
    return {
        "beats sign codes beyond the interval": f"{len(beaten)} of {len(ratios)}",
        **{key: ratio.shown() for key, ratio in ratios.items()},
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The storage goals, RaBitQ against sign codes, the best float32 row, and the best
    row within the byte budget against it (with its interval and verdict at 0.95x)."""
    met = storage_goals(rows)
    against_sign = rabitq_against_sign_codes(rows)
    if against_sign is not None:
        met["rabitq 1 bit above sign codes at every tau (Flat)"] = against_sign
    best_float = max((r for r in rows if r["storage"] == "float32"), key=lambda r: r["ndcg_at_10"])
    met["best float32"] = {"ndcg_at_10": best_float["ndcg_at_10"], "row": _name(best_float)}
    for size, what in (("bytes_per_doc", "bytes"), ("ram_bytes_per_doc", "RAM bytes")):
        small = [r for r in rows if r[size] <= BYTES_GOAL]
        if not small:
            continue
        best_small = max(small, key=lambda r: r["ndcg_at_10"])
        versus = paired_ratio_interval(best_small[PER_QUERY], best_float[PER_QUERY])
        met[f"best at most {BYTES_GOAL} {what} per document, at least 0.95x best float32"] = {
            "ndcg_at_10": best_small["ndcg_at_10"],
            "bytes_per_doc": best_small["bytes_per_doc"],
            "ram_bytes_per_doc": best_small["ram_bytes_per_doc"],
            "vs_best_float32": versus.shown(),
            "verdict": versus.verdict(0.95),
            "row": _name(best_small),
        }
    return met


def storage_label(row: dict[str, Any]) -> str:
    """``binary+rescore M=4 (documents)``: the storage with its rescore M and centre."""
    label = row["storage"] + (f" M={row['rescore']}" if row["rescore"] else "")
    return label + (f" ({row['binary_centre']})" if row["binary_centre"] else "")


def _name(row: dict[str, Any]) -> str:
    return f"{row['filter']} tau {row['tau']:g}, {storage_label(row)}, {row['index_type']}"


def report_body(rows: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    met = record["goals"]
    first = rows[0]
    lines = [
        f"Model {record['model']}, PromptEOL, mean pooling; {record['documents']} documents, "
        f"{record['queries']} judged test queries; k = 10. A ratio's brackets hold its 95% "
        "paired bootstrap interval over the queries (1,000 resamples, seed 0); a goal is met "
        "when the whole interval clears it, missed when none of it does, else within noise.",
        "",
        *(
            [
                f"Measured in {record['sittings']} sittings on this machine: the run stopped "
                "and resumed from the rows it had measured. A row's query encoding figure is "
                "its sitting's; below is the first row's.",
                "",
            ]
            if record["sittings"] > 1
            else []
        ),
        f"Query encoding (the LLM forward, the same for every row): p50 "
        f"{first['encode_ms_p50']:.1f} ms, p95 {first['encode_ms_p95']:.1f} ms per query.",
        "",
        "## Goals",
        "",
    ]
    for goal, value in met.items():
        lines.append(f"- {goal}: {_goal_text(value)}")
    lines += [
        "",
        "## Every row",
        "",
        "B/doc: every byte the dense part keeps (codes, ids, binary centre, rescore "
        "vectors); RAM B/doc: without the memory-mapped rescore vectors. ★: on the Pareto "
        "front of nDCG@10 against B/doc; ☆: against RAM B/doc.",
        "",
    ]
    header = [
        "filter",
        "tau",
        "dim",
        "storage",
        "index",
        "nDCG@10",
        "vs float32",
        "recall@10 vs exact",
        "B/doc",
        "RAM B/doc",
        "build s",
        "search ms p50/p95",
        "fetch ms p50/p95",
        "batch QPS",
        "front",
    ]
    cells = [
        [
            r["filter"],
            f"{r['tau']:g}",
            str(r["dim"]),
            storage_label(r),
            r["index_type"],
            f"{r['ndcg_at_10']:.4f}",
            _interval(r, "vs_float32").shown(),
            f"{r['recall_at_10_vs_exact']:.3f}",
            f"{r['bytes_per_doc']:.0f}",
            f"{r['ram_bytes_per_doc']:.0f}",
            f"{r['build_seconds']:.2f}",
            f"{r['search_ms_p50']:.2f} / {r['search_ms_p95']:.2f}",
            f"{r['fetch_ms_p50']:.2f} / {r['fetch_ms_p95']:.2f}",
            f"{r['batch_qps']:.0f}",
            ("★" if r["pareto"] else "") + ("☆" if r["ram_pareto"] else ""),
        ]
        for r in rows
    ]
    return lines + markdown_table(header, cells) + ["", "![frontier](frontier.png)"]


def _goal_text(value: Any) -> str:
    if value is None:
        return "no row measured"
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items()
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """nDCG@10 against all bytes (left) and RAM bytes (right), each with its front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    sizes = (("bytes_per_doc", "pareto", "all bytes"), ("ram_bytes_per_doc", "ram_pareto", "RAM"))
    for axes, (size, mark, what) in zip(panels, sizes, strict=True):
        for storage in sorted({r["storage"] for r in rows}):
            chosen = [r for r in rows if r["storage"] == storage]
            xs, ys = [r[size] for r in chosen], [r["ndcg_at_10"] for r in chosen]
            axes.scatter(xs, ys, label=storage, s=14)
        front = sorted((r for r in rows if r[mark]), key=lambda r: r[size])
        xs, ys = [r[size] for r in front], [r["ndcg_at_10"] for r in front]
        axes.step(xs, ys, where="post", color="black", linewidth=1, label="Pareto front")
        axes.set_xscale("log")
        axes.set_xlabel(f"bytes per document ({what} of the dense part)")
    panels[0].set_ylabel("nDCG@10 (SciFact test)")
    panels[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@numpy_blas_on_one_thread()
def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = FrontierSettings(
        taus=tuple(float(t) for t in args.taus.split(",")),
        index_types=tuple(args.index_types.split(",")),
        storages=tuple(args.storages.split(",")),
        latency_queries=args.latency_queries,
    )
    with tempfile.TemporaryDirectory(prefix="frontier-") as scratch:
        inputs, spectrum = inputs_for(args, Path(scratch))
        machine = encoder_machine_record(inputs.encoder)
        header = {
            "settings": vars(settings),
            "machine": machine,
            "store": inputs.store.digest,
            "queries": inputs.queries.ids,
        }
        measured = MeasuredRows(args.out / PARTIAL_ROWS, header)
        rows = frontier_rows(spectrum, inputs, settings, measured)
    with_ratios(rows)
    record = {
        "model": args.model,
        "documents": len(inputs.doc_ids),
        "queries": len(inputs.queries.ids),
        # Sittings of one machine: a stopped run resumes from its measured rows.
        "sittings": measured.sittings,
        "settings": {k: v for k, v in vars(settings).items()},
        "goals": goals(rows),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "frontier.png")
    # The per-query scores go to their own file, not into frontier.json's rows.
    per_query = [({"row": _name(row)}, row.pop(PER_QUERY)) for row in rows]
    write_per_query(args.out / "frontier-per-query.jsonl", list(inputs.qrels), per_query)
    write_report(
        args.out,
        "frontier",
        record,
        report_body(rows, record),
        title="Compression frontier",
        machine=machine,
    )
    measured.path.unlink()


if __name__ == "__main__":
    main()
