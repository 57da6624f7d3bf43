"""IVF over RaBitQ codes: FAISS's plain layout against its FastScan layout, in one run.

FAISS keeps IVF RaBitQ codes two ways: ``IndexIVFRaBitQ`` (``IVFn,RaBitQb``) scans one code
at a time; ``IndexIVFRaBitQFastScan`` (``IVFn,RaBitQfsb``) packs 32 codes per block and
scores them with SIMD lookup tables, whose 8-bit quantization can move a score slightly.
This decides which one ``--storage rabitq`` builds for ``IVFn``: the vectors are
frontier_scale.py's (SciFact's raw embeddings plus covariance-shaped noise, through the
default filter), the queries the 300 real SciFact test queries, and each layout is
measured one query at a time (p50) and batched (QPS), with recall@10 against exact search.

    python benchmarks/rabitq_fastscan.py --out benchmarks/results/rabitq-fastscan
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from frontier_scale import real_inputs
from inputs import SCIFACT, dataset_path
from report import markdown_table, write_report

from retriever.core.spec import DEFAULT_MODEL
from retriever.core.threads import numpy_blas_on_one_thread
from retriever.evaluation.bench.frontier import exact_top, projection
from retriever.evaluation.bench.frontier_scale import (
    calibrate_spread,
    measure_row,
    synthetic_embeddings,
)

LAYOUTS = {"plain": "RaBitQ{bits}", "fastscan": "RaBitQfs{bits}"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=1_000_000, help="generated vectors")
    parser.add_argument("--filter", default="embedfilter-nomean:2", help="NAME:TAU")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", default="16,64")
    parser.add_argument("--bits", default="1,2,4")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def layout_rows(
    vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, args
) -> list[dict[str, Any]]:
    """Each bits x layout x nprobe, every index trained on the same vectors."""
    rows = []
    for bits in map(int, args.bits.split(",")):
        for layout, codes in LAYOUTS.items():
            factory = f"IVF{args.nlist},{codes.format(bits=bits)}"
            index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            started = time.perf_counter()
            index.train(vectors)
            index.add(vectors)
            build = time.perf_counter() - started
            size = len(faiss.serialize_index(index))
            for nprobe in map(int, args.nprobes.split(",")):
                index.nprobe = nprobe
                rows.append(
                    {
                        "bits": bits,
                        "layout": layout,
                        "factory": factory,
                        "nprobe": nprobe,
                        "build_seconds": build,
                        "bytes_per_vector": size / len(vectors),
                        **measure_row(
                            index,
                            queries,
                            exact,
                            k=10,
                            latency_queries=args.latency_queries,
                            warmup=5,
                        ),
                    }
                )
            del index
    return rows


@numpy_blas_on_one_thread()
def main() -> None:
    args = parse_args()
    real, raw_queries, spectrum, machine = real_inputs(args)
    name, tau = args.filter.split(":")
    embed_filter = projection(spectrum, name, float(tau))
    spread = calibrate_spread(real, embed_filter, seed=args.seed)["spread"]
    made = synthetic_embeddings(real, args.size, spread, seed=args.seed)
    vectors = np.concatenate([embed_filter.transform(chunk) for chunk in made])
    queries = embed_filter.transform(raw_queries)
    exact = exact_top(queries, vectors, 10)
    rows = layout_rows(vectors, queries, exact, args)
    body = [
        f"{args.size:,} generated vectors, {name} tau {tau} ({embed_filter.dim} dimensions), "
        f"{len(queries)} real queries, k = 10, {faiss.omp_get_max_threads()} FAISS threads. "
        "Recall is against exact search over the same vectors.",
        "",
        *markdown_table(
            [
                "bits",
                "layout",
                "nprobe",
                "recall@10",
                "p50 ms",
                "p95 ms",
                "QPS",
                "bytes/vector",
                "build s",
            ],
            [
                [
                    str(r["bits"]),
                    r["layout"],
                    str(r["nprobe"]),
                    f"{r['recall_at_10_vs_exact']:.3f}",
                    f"{r['search_ms_p50']:.2f}",
                    f"{r['search_ms_p95']:.2f}",
                    f"{r['batch_qps']:.0f}",
                    f"{r['bytes_per_vector']:.1f}",
                    f"{r['build_seconds']:.1f}",
                ]
                for r in rows
            ],
        ),
    ]
    record = {"size": args.size, "filter": name, "tau": float(tau), "spread": spread, "rows": rows}
    write_report(
        args.out,
        "rabitq-fastscan",
        record,
        body,
        title="IVF RaBitQ: plain against FastScan",
        machine=machine,
    )


if __name__ == "__main__":
    main()
