"""End-to-end search latency in a loop of queries, as an application runs it, before and after.

`Searcher.search(query, k=10)` for each of the first N SciFact test queries, one after
another, with the index's own model, per method. The code of git revision --before and
of --after (default: this working tree) each run in their own process, through the
public `retriever.Searcher` only, alternating per method, over --rounds rounds; reported
is the median per query over all rounds, and the spread of after / before over the
rounds (each round runs both sides of a method back to back, so a ratio within one round
is paired against the machine's drift). Unlike `retriever bench`, nothing here limits
numpy's threads: this is what a user's process sees.

Each code searches the index that its own `retriever index DATASET --sparse --bm25` built
(the README's main command, with the default model and dtype): the index format has
changed since older revisions, and neither side is asked to read the other's. The before
side keeps its own cache (converted model, embedding store) in a temporary folder, so it
encodes the corpus itself; the after side uses the user's cache, and reuses a store that
an earlier run wrote.

    python benchmarks/search_loop.py --before 3b8d687 --out benchmarks/results/search-loop
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path, test_queries
from report import machine_record, markdown_table, write_report
from revisions import (
    Code,
    add_revision_options,
    code_trees,
    own_cache,
    run_cli,
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


def index_argv(args: argparse.Namespace, folder: Path) -> list[str]:
    """`retriever index` into ``folder`` with the parts the measured methods search."""
    argv = ["-q", "index", str(args.dataset), "--out", str(folder)]
    parts = {part for method in args.methods.split(",") for part in method.split("+")}
    argv += ["--sparse"] * ("sparse" in parts) + ["--bm25"] * ("bm25" in parts)
    return argv + (["--model", args.model] if args.model else [])


def build(args: argparse.Namespace, code: Code, scratch: Path) -> Path:
    """The index of ``code``, built by its own `retriever index` under ``scratch``."""
    folder = scratch / f"index-{code.side}"
    built = run_cli(code, index_argv(args, folder), cwd=scratch, **side_cache(code, scratch))
    print(f"{code.side} index built in {built.seconds:.0f} s", flush=True)
    return folder


def side_cache(code: Code, scratch: Path) -> dict[str, str]:
    """The before side's own cache folder; the after side keeps the user's."""
    return own_cache(code, scratch) if code.side == "before" else {}


def measure(
    args: argparse.Namespace, queries: list[str], scratch: Path
) -> tuple[dict, list[Code], dict[str, Path]]:
    """Milliseconds per query, by side and method, over every round; the codes and the
    index folders they built."""
    methods = args.methods.split(",")
    times: dict[str, dict[str, list[list[float]]]] = {"before": {}, "after": {}}
    codes = code_trees(args.before, args.after, scratch)
    folders = {code.side: build(args, code, scratch) for code in codes}
    for _ in range(args.rounds):
        for method in methods:
            for code in codes:
                job = {"index": str(folders[code.side]), "method": method, "queries": queries}
                env = side_cache(code, scratch)
                ms = run_worker(__file__, code, job, scratch, **env)
                times[code.side].setdefault(method, []).append(ms)
                print(code.side, method, f"{statistics.median(ms):.1f} ms", flush=True)
    return times, codes, folders


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


def method_row(method: str, times: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any]:
    """One method's medians over every query of every round, and each round's after /
    before ratio of medians."""
    before, after = times["before"][method], times["after"][method]
    before_rounds = [statistics.median(ms) for ms in before]
    after_rounds = [statistics.median(ms) for ms in after]
    return {
        "method": method,
        "before_ms_p50": statistics.median(ms for round_ms in before for ms in round_ms),
        "after_ms_p50": statistics.median(ms for round_ms in after for ms in round_ms),
        "before_round_ms_p50": before_rounds,
        "after_round_ms_p50": after_rounds,
        "round_ratios": [new / old for old, new in zip(before_rounds, after_rounds, strict=True)],
    }


def report(args: argparse.Namespace, queries: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="search-loop-") as scratch:
        times, codes, folders = measure(args, queries, Path(scratch))
        machine = index_machine(folders["after"])
    rows = [method_row(method, times) for method in args.methods.split(",")]
    table = markdown_table(
        ["method", "before ms", "after ms", "after / before", "over the rounds"],
        (
            [
                row["method"],
                f"{row['before_ms_p50']:.1f}",
                f"{row['after_ms_p50']:.1f}",
                f"{row['after_ms_p50'] / row['before_ms_p50']:.2f}",
                f"{min(row['round_ratios']):.2f}-{max(row['round_ratios']):.2f}",
            ]
            for row in rows
        ),
    )
    body = [
        f"Median end-to-end `Searcher.search` per query over the first {len(queries)} "
        f"test queries of {args.dataset.name}, {args.rounds} rounds, the index's model; "
        f"each side searches the index its own `retriever index` built from the same "
        f"documents; before = {codes[0].label}, after = {codes[1].label}. The last column "
        f"is the lowest and highest after / before of one round's medians.",
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
        machine=machine,
    )


def main() -> None:
    job = worker_job()
    if job is not None:
        worker(job)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_revision_options(parser)
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder both sides index"
    )
    parser.add_argument("--model", default=None, help="model of both indexes (default: the CLI's)")
    parser.add_argument("--queries", type=int, default=60, help="first N test queries")
    parser.add_argument(
        "--rounds", type=int, default=5, help="times each side runs each method (default: 5)"
    )
    parser.add_argument("--methods", default=METHODS, help="comma list (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/search-loop", help="results folder")
    args = parser.parse_args()
    report(args, test_queries(args.dataset, args.queries))


if __name__ == "__main__":
    main()
