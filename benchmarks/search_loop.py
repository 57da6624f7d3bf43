"""End-to-end search latency in a loop of queries, as an application runs it, before and after.

`Searcher.search(query, k=10)` for each of the first N SciFact test queries, one after
another, with the default model on a built SciFact index, per method. The code of git
revision --before (a temporary worktree) and this checkout each run in their own process,
alternating per method, over two rounds; reported is the median per query over both.
Unlike `retriever bench`, nothing here limits numpy's threads: this is what a user's
process sees.

The index is the one the README's main command builds (`indexes/scifact-smollm2`, with
the sparse and BM25 parts).

    .venv/bin/python benchmarks/search_loop.py --before 3b8d687 --out benchmarks/results/search-loop
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import command_line, markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"
METHODS = ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")


def first_queries(limit: int) -> list[str]:
    texts = []
    with (DATASET / "queries.jsonl").open() as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
    return texts[:limit]


def work(index: str, method: str, queries: list[str]) -> dict:
    import retriever
    from retriever import Searcher

    searcher = Searcher.load(index)
    searcher.search(queries[0], 10, method=method)  # warm-up
    seconds = []
    for query in queries:
        started = time.perf_counter()
        searcher.search(query, 10, method=method)
        seconds.append(time.perf_counter() - started)
    return {"code": str(Path(retriever.__file__).parents[1]), "ms": [s * 1e3 for s in seconds]}


def worker(code: Path, index: Path, method: str, queries: list[str], scratch: Path) -> list:
    output = scratch / "worker.json"
    (scratch / "queries.json").write_text(json.dumps(queries))
    argv = [sys.executable, __file__, "--worker", str(index), method, str(scratch)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    # cwd outside the checkout: sys.path[0] must not shadow the code under test.
    subprocess.run(argv, cwd=scratch, env=env, check=True)
    result = json.loads(output.read_text())
    if Path(result["code"]).resolve() != code.resolve():
        raise SystemExit(f"the worker ran {result['code']}, not {code}")
    return result["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision to compare with")
    parser.add_argument("--index", default=str(ROOT / "indexes" / "scifact-smollm2"))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/search-loop")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        index, method, scratch = args.worker
        queries = json.loads((Path(scratch) / "queries.json").read_text())
        result = work(index, method, queries)
        (Path(scratch) / "worker.json").write_text(json.dumps(result))
        return
    index = Path(args.index).resolve()  # a generation folder, fixed for the whole run
    if not (index / "manifest.json").exists():
        raise SystemExit(f"{index} is not a built index: run the README's main command first")
    queries = first_queries(args.queries)
    from worktree import checkout  # benchmarks/ is on the path

    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with (
        tempfile.TemporaryDirectory() as scratch,
        checkout(args.before, Path(scratch) / "before") as before_code,
    ):
        codes = {"before": before_code, "after": ROOT}
        for _ in range(args.rounds):
            for method in METHODS:
                for name, code in codes.items():
                    ms = worker(code, index, method, queries, Path(scratch))
                    times[name].setdefault(method, []).extend(ms)
                    print(name, method, f"{statistics.median(ms):.1f} ms", flush=True)

    rows = [
        {
            "method": method,
            "before_ms_p50": statistics.median(times["before"][method]),
            "after_ms_p50": statistics.median(times["after"][method]),
        }
        for method in METHODS
    ]
    command = command_line(".venv/bin/python")
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
    lines = [
        f"`{command}`",
        "",
        f"Median end-to-end `Searcher.search` per query over the first {len(queries)} SciFact "
        f"queries, {args.rounds} rounds, default model, {args.index} (generation "
        f"{index.name}); before = {args.before}.",
        "",
        *table,
    ]
    record = {"command": command, "before": args.before, "rows": rows}
    write_report(args.out, "search_loop", record, lines)


if __name__ == "__main__":
    main()
