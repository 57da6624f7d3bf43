"""Batched exhaustive search: FAISS 1.15's BLAS threshold against the one this package sets.

FAISS answers a batch of queries on a Flat index either with its own SIMD scan or with a
BLAS matrix product, switching when queries x dim reaches ``distance_compute_blas_threshold``
(128,000 by default in 1.15). The package sets 800 per OpenMP thread instead (see
``retriever/parts/dense/faiss_install.py``). For each dimension EmbedFilter produces from
the 576-dim model, N random unit vectors and a batch of random unit queries, timed under both
thresholds in the same run (median of ``--repeats`` after a warm-up), plus the ratio of the
two paths' times per batch size, which shows where the crossover lies on this machine.
Last, the same batch timed right after a numpy matrix product the size of a filter
transform, with numpy's BLAS threads as they are and on one thread
(``retriever.core.threads.numpy_blas_on_one_thread``, what ``retriever bench`` runs under).

    python benchmarks/blas_threshold.py --out benchmarks/results/blas-threshold
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from report import markdown_table, write_report

from retriever.core.threads import numpy_blas_on_one_thread
from retriever.evaluation.metrics import median_seconds
from retriever.parts.dense.faiss_install import FAISS_DIMENSION_AWARE_DEFAULT, faiss

ALWAYS_BLAS, NEVER_BLAS = 0, 2**31 - 1


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def timed(index: faiss.Index, queries: np.ndarray, k: int, threshold: int, repeats: int):
    faiss.cvar.distance_compute_blas_threshold = threshold
    return median_seconds(lambda: index.search(queries, k), repeats)[1]


def qps_after_numpy_product(
    index: faiss.Index, queries: np.ndarray, k: int, rng: np.random.Generator, repeats: int
) -> float:
    """Median QPS of one batch searched right after a (5,183 x 576) @ (576 x 576) product."""
    documents = rng.standard_normal((5183, 576), dtype=np.float32)
    projection = rng.standard_normal((576, 576), dtype=np.float32)
    seconds = []
    for _ in range(repeats):
        documents @ projection
        started = time.perf_counter()
        index.search(queries, k)
        seconds.append(time.perf_counter() - started)
    return len(queries) / float(np.median(seconds))


def threshold_rows(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    """Batch QPS under FAISS's default threshold and the package's, per N, dim and batch."""
    package_threshold = faiss.cvar.distance_compute_blas_threshold
    rows = []
    for n in comma_ints(args.sizes):
        for dim in comma_ints(args.dims):
            index = faiss.IndexFlatIP(dim)
            index.add(unit_rows(rng, n, dim))
            for batch in comma_ints(args.batches):
                queries = unit_rows(rng, batch, dim)
                default = timed(index, queries, args.k, FAISS_DIMENSION_AWARE_DEFAULT, args.repeats)
                package = timed(index, queries, args.k, package_threshold, args.repeats)
                row = {
                    "n": n,
                    "dim": dim,
                    "queries": batch,
                    "faiss_default_qps": batch / default,
                    "package_qps": batch / package,
                    "speedup": default / package,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    faiss.cvar.distance_compute_blas_threshold = package_threshold
    return rows


def crossover(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    """Per dimension and batch size, the SIMD scan's time over BLAS's."""
    package_threshold = faiss.cvar.distance_compute_blas_threshold
    entries = []
    for dim in comma_ints(args.dims):
        index = faiss.IndexFlatIP(dim)
        index.add(unit_rows(rng, args.crossover_size, dim))
        ratios = {}
        for batch in comma_ints(args.crossover_batches):
            queries = unit_rows(rng, batch, dim)
            scan = timed(index, queries, args.k, NEVER_BLAS, args.repeats)
            blas = timed(index, queries, args.k, ALWAYS_BLAS, args.repeats)
            ratios[batch] = scan / blas
        entries.append({"dim": dim, "scan_over_blas_seconds": ratios})
        print(json.dumps(entries[-1]), flush=True)
    faiss.cvar.distance_compute_blas_threshold = package_threshold
    return entries


def after_numpy(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, float]:
    """QPS of a batch searched right after a numpy product, numpy's BLAS threads as they
    are and on one thread."""
    index = faiss.IndexFlatIP(args.after_numpy_dim)
    index.add(unit_rows(rng, args.after_numpy_size, args.after_numpy_dim))
    queries = unit_rows(rng, 300, args.after_numpy_dim)
    repeats = 5 * args.repeats
    qps = {
        "numpy_blas_threads_as_they_are": qps_after_numpy_product(
            index, queries, args.k, rng, repeats
        )
    }
    with numpy_blas_on_one_thread():
        qps["numpy_blas_on_one_thread"] = qps_after_numpy_product(
            index, queries, args.k, rng, repeats
        )
    print(json.dumps(qps), flush=True)
    return qps


def report_body(args: argparse.Namespace, record: dict) -> list[str]:
    meta, rows, entries = record["meta"], record["rows"], record["crossover"]
    qps = record["after_numpy_product"]
    batches = list(entries[0]["scan_over_blas_seconds"])
    return [
        f"FAISS {meta['faiss']}, {meta['omp_threads']} OpenMP threads; Flat inner product, "
        f"k = {args.k}, random unit vectors; median of {args.repeats} after a warm-up.",
        "",
        f"Batch QPS with FAISS's default threshold ({meta['faiss_default_threshold']:,}) and "
        f"the package's ({meta['package_threshold']:,}):",
        "",
        *markdown_table(
            ["N", "dim", "queries", "FAISS default QPS", "package QPS", "speed-up"],
            (
                [
                    f"{row['n']:,}",
                    str(row["dim"]),
                    str(row["queries"]),
                    f"{row['faiss_default_qps']:,.0f}",
                    f"{row['package_qps']:,.0f}",
                    f"{row['speedup']:.2f}x",
                ]
                for row in rows
            ),
        ),
        "",
        f"SIMD scan time over BLAS time, N = {args.crossover_size:,} (above 1: BLAS is faster):",
        "",
        *markdown_table(
            ["dim", *(f"{b} queries" for b in batches)],
            (
                [str(entry["dim"])] + [f"{entry['scan_over_blas_seconds'][b]:.2f}" for b in batches]
                for entry in entries
            ),
        ),
        "",
        f"300 queries on Flat {args.after_numpy_size:,} x {args.after_numpy_dim}, each batch "
        "timed right after a numpy (5,183 x 576) @ (576 x 576) product (median of "
        f"{5 * args.repeats}): {qps['numpy_blas_threads_as_they_are']:,.0f} QPS with "
        "numpy's BLAS threads as they are, "
        f"{qps['numpy_blas_on_one_thread']:,.0f} with numpy's BLAS on one thread.",
    ]


def comma_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma list of index sizes")
    parser.add_argument("--dims", default="576,288,144,72", help="comma list of dimensions")
    parser.add_argument("--batches", default="16,300", help="comma list of queries per batch")
    parser.add_argument(
        "--crossover-size", type=int, default=200_000, help="index size of the crossover table"
    )
    parser.add_argument(
        "--crossover-batches",
        default="1,2,4,8,16,32,64,300",
        help="comma list of batch sizes of the crossover table",
    )
    parser.add_argument(
        "--after-numpy-size", type=int, default=10_000, help="index size of the numpy check"
    )
    parser.add_argument(
        "--after-numpy-dim", type=int, default=72, help="dimension of the numpy check"
    )
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--out", default="benchmarks/results/blas-threshold", help="results folder")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    meta = {
        "faiss": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "package_threshold": faiss.cvar.distance_compute_blas_threshold,
        "faiss_default_threshold": FAISS_DIMENSION_AWARE_DEFAULT,
    }
    record = {
        "meta": meta,
        "rows": threshold_rows(args, rng),
        "crossover": crossover(args, rng),
        "after_numpy_product": after_numpy(args, rng),
    }
    write_report(
        args.out,
        "blas_threshold",
        record,
        report_body(args, record),
        title="FAISS's BLAS threshold against the package's",
    )


if __name__ == "__main__":
    main()
