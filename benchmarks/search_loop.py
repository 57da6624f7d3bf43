"""End-to-end search latency in a loop of queries, as an application runs it, before and after.

`Searcher.search(query, k=10)` for each of the first N SciFact queries, one after
another, with the index's own model on a built SciFact index, per method. The code of
git revision --before and of --after (default: this working tree) each run in their own
process, through the public `retriever.Searcher` only, alternating per method, over
--rounds rounds; reported is the median per query over all rounds. Unlike `retriever
bench`, nothing here limits numpy's threads: this is what a user's process sees.

The index is the one the README's main command builds (`indexes/scifact-smollm2`, with
the sparse and BM25 parts).

    python benchmarks/search_loop.py --before 3b8d687 --out benchmarks/results/search-loop
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inputs import ROOT, SCIFACT, dataset_path, query_texts
from report import machine_record, markdown_table, write_report
from revisions import (
    Code,
    add_revision_options,
    code_trees,
    run_worker,
    worker_job,
    worker_reply,
)

METHODS = "dense,sparse,bm25,dense+sparse,dense+bm25"
K = 10


def worker(job_file: Path) -> None:
    """One code's side, in its own process: each query searched once, after a warm-up."""
    from retriever import Searcher

    job = json.loads(job_file.read_text())
    queries, method = job["queries"], job["method"]
    searcher = Searcher.load(job["index"])
    searcher.search(queries[0], K, method=method)  # warm-up
    milliseconds = []
    for query in queries:
        started = time.perf_counter()
        searcher.search(query, K, method=method)
        milliseconds.append((time.perf_counter() - started) * 1e3)
    searcher.close()
    worker_reply(job, milliseconds)


def measure(args: argparse.Namespace, index: Path, queries: list[str]) -> tuple[dict, list[Code]]:
    """Milliseconds per query, by side and method, over every round."""
    methods = args.methods.split(",")
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory(prefix="search-loop-") as scratch:
        codes = code_trees(args.before, args.after, Path(scratch))
        for _ in range(args.rounds):
            for method in methods:
                for code in codes:
                    job = {"index": str(index), "method": method, "queries": queries}
                    ms = run_worker(__file__, code, job, Path(scratch))
                    times[code.side].setdefault(method, []).extend(ms)
                    print(code.side, method, f"{statistics.median(ms):.1f} ms", flush=True)
    return times, codes


def index_machine(index: Path) -> dict[str, Any]:
    """The machine record of searching ``index``: its model's weights, in the dtype the
    index was built in (what `Searcher.load` runs)."""
    from retriever.encode.models import resolve_model
    from retriever.encode.weights import weights_origin
    from retriever.index.manifest import current_manifest

    manifest = current_manifest(index)
    spec = manifest.spec.model
    weights = weights_origin(resolve_model(spec.name, spec.revision))
    return machine_record(dtype=manifest.model["dtype"], weights=weights)


def report(args: argparse.Namespace, index: Path, queries: list[str]) -> None:
    times, codes = measure(args, index, queries)
    rows = [
        {
            "method": method,
            "before_ms_p50": statistics.median(times["before"][method]),
            "after_ms_p50": statistics.median(times["after"][method]),
        }
        for method in args.methods.split(",")
    ]
    table = markdown_table(
        ["method", "before ms", "after ms", "after / before"],
        (
            [
                row["method"],
                f"{row['before_ms_p50']:.1f}",
                f"{row['after_ms_p50']:.1f}",
                f"{row['after_ms_p50'] / row['before_ms_p50']:.2f}",
            ]
            for row in rows
        ),
    )
    body = [
        f"Median end-to-end `Searcher.search` per query over the first {len(queries)} SciFact "
        f"queries, {args.rounds} rounds, the index's model, {args.index} (generation "
        f"{index.name}); before = {codes[0].label}, after = {codes[1].label}.",
        "",
        *table,
    ]
    record = {"before": codes[0].label, "after": codes[1].label, "rows": rows}
    write_report(
        args.out,
        "search_loop",
        record,
        body,
        title="End-to-end search latency in a loop of queries, before and after",
        machine=index_machine(index),
    )


def main() -> None:
    job = worker_job()
    if job is not None:
        worker(job)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_revision_options(parser)
    parser.add_argument(
        "--index",
        default=str(ROOT / "indexes" / "scifact-smollm2"),
        help="built index to search, with its sparse and BM25 parts (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder of the queries"
    )
    parser.add_argument("--queries", type=int, default=60, help="first N queries of the file")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs each method")
    parser.add_argument("--methods", default=METHODS, help="comma list (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/search-loop", help="results folder")
    args = parser.parse_args()
    index = Path(args.index).resolve()  # a generation folder, fixed for the whole run
    if not (index / "manifest.json").exists():
        sys.exit(f"{index} is not a built index: run the README's main command first")
    queries = list(query_texts(args.dataset).values())[: args.queries]
    report(args, index, queries)


if __name__ == "__main__":
    main()
