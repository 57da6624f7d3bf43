"""Per-query overhead of `Searcher.search`, before and after, at SciFact size, in one run.

Overhead is what a search spends beyond the work it cannot avoid: end-to-end
`Searcher.search(query, k=10)` minus the query's LLM forward and filter minus the search
proper of each retriever it uses (FAISS, the key-token product, BM25 scoring). Methods
dense, sparse, bm25, dense+sparse and dense+bm25; the code of git revision --before and
of --after (default: this working tree), each in its own process, alternating per
method. Each code searches the index folder that its own `retriever index` built from the
same documents with the same model: the folder's format has changed since older
revisions, and neither side is asked to read the other's.

The index is SciFact's 5,183 documents encoded with the tiny random Llama of the tests
(hidden size 32, a BPE tokenizer trained on the fly): overhead excludes the LLM forward,
and the real model would take 10+ minutes to encode the corpus on 2 cores.

    python benchmarks/query_overhead.py --before f8fac94 --out benchmarks/results/query-overhead
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path, save_tiny_model, test_queries
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
# A lighter key-token index than the default K = 1000 of a 49k vocabulary: the tiny
# model's vocabulary is 400 tokens. --remove-mean-direction is today's default filter,
# which older revisions built only when asked: both sides index the same vectors.
BUILD_FLAGS = [
    "--dtype", "float32", "--batch-size", "64", "--remove-mean-direction", "--sparse",
    "--sparse-doc-tokens", "64", "--sparse-query-tokens", "16", "--bm25",
]  # fmt: skip
# One thread everywhere: the machine has 2 cores, shared; and per-query overhead is
# single-threaded Python anyway.
THREADS_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


# --- the worker: one code, one method, in its own process ---------------------------------
# It drives the searcher through public names only (its public attributes and methods, no
# `_names`), so that one worker runs on either side of a comparison.


class EncoderClock:
    """Times the encoder's own calls (the forward, a sparse query's token ids) inside each
    search, so that the LLM forward, the noisy part, is subtracted within the same call;
    keeps the untimed originals for the parts called directly."""

    def __init__(self, encoder: Any) -> None:
        self.nanoseconds = 0
        self.encode_queries = encoder.encode_queries
        self.text_token_ids = encoder.text_token_ids
        encoder.encode_queries = self.timed(encoder.encode_queries)
        encoder.text_token_ids = self.timed(encoder.text_token_ids)

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return function(*args, **kwargs)
            finally:
                self.nanoseconds += time.perf_counter_ns() - started

        return call


@functools.cache
def english_stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def unavoidable_parts(
    searcher: Any, clock: EncoderClock, query: str, method: str, depth: int
) -> dict[str, Callable[[], object]]:
    """The parts a search of ``query`` by ``method`` cannot skip, each ready to call."""
    import bm25s

    parts, calls = method.split("+"), {}
    if method != "bm25":
        embedding = clock.encode_queries([query])
        vectors = searcher.filter.transform(embedding)
        calls["filter"] = lambda: searcher.filter.transform(embedding)
    if "dense" in parts:
        calls["faiss"] = lambda: searcher.search_vectors(vectors, depth)
    if "sparse" in parts:
        space = searcher.sparse.spec.space
        own = clock.text_token_ids([query], queries=True)
        lens_vectors = vectors if space == "filtered" else searcher.lens.vectors(embedding, space)

        def sparse() -> object:
            matrix = searcher.sparse.query_matrix(searcher.lens, lens_vectors, own, None)
            return searcher.sparse.search(matrix, depth)

        calls["sparse"] = sparse
    if "bm25" in parts:
        words = bm25s.tokenize(
            [query],
            stopwords="en",
            stemmer=english_stemmer(),
            return_ids=False,
            show_progress=False,
        )
        calls["bm25"] = lambda: searcher.bm25.model.retrieve(
            words, k=depth, show_progress=False, n_threads=0
        )
    return calls


def fastest_ns(call: Callable[[], object], repeats: int) -> int:
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    return min(times)


def measure_query(
    searcher: Any, clock: EncoderClock, query: str, method: str, repeats: int, depth: int
) -> tuple[dict[str, Any], list[list]]:
    """One query's row (microseconds) and its hits as ``[id, score]`` pairs."""
    outside = []
    for _ in range(repeats):
        clock.nanoseconds = 0
        started = time.perf_counter_ns()
        found = searcher.search(query, k=K, method=method)
        outside.append((time.perf_counter_ns() - started, clock.nanoseconds))
    direct = {
        name: fastest_ns(call, repeats)
        for name, call in unavoidable_parts(searcher, clock, query, method, depth).items()
    }
    encoder_direct = None
    if method != "bm25":
        encoder_direct = fastest_ns(lambda: clock.encode_queries([query]), repeats) / 1e3
    overhead = min(total - inner for total, inner in outside) - sum(direct.values())
    row = {
        "end_to_end_us": min(total for total, _ in outside) / 1e3,
        "encoder_in_call_us": min(inner for _, inner in outside) / 1e3,
        "encoder_direct_us": encoder_direct,
        "direct_us": {name: ns / 1e3 for name, ns in direct.items()},
        "overhead_us": overhead / 1e3,
    }
    return row, [[hit.id, hit.score] for hit in found]


def fusion_depth(searcher_class: type) -> int:
    """The depth a hybrid search fuses at, from the module that defines ``Searcher`` in
    this process's code: the module has moved between revisions, and naming one path
    would import the other revision's file."""
    return inspect.getmodule(searcher_class).FUSION_DEPTH


def measure(folder: Path, method: str, queries: list[str], repeats: int) -> dict[str, Any]:
    """Per query: the minimum over ``repeats`` of (end-to-end - encoder time inside the same
    call), less the minimum over ``repeats`` of each unavoidable part called directly."""
    import numpy as np

    from retriever import Searcher

    searcher = Searcher.load(folder, dtype="float32")
    clock = EncoderClock(searcher.encoder)
    depth = min(K if "+" not in method else max(K, fusion_depth(Searcher)), len(searcher))
    for query in queries[:5]:  # warm-up: lazy parts (lens, placement, caches) are built
        searcher.search(query, k=K, method=method)
        for call in unavoidable_parts(searcher, clock, query, method, depth).values():
            call()
    rows, hits = [], []
    for query in queries:
        row, found = measure_query(searcher, clock, query, method, repeats, depth)
        rows.append(row)
        hits.append(found)
    searcher.close()
    return {"numpy": np.__version__, "rows": rows, "hits": hits}


def worker(job_file: Path) -> None:
    job = json.loads(job_file.read_text())
    result = measure(Path(job["index"]), job["method"], job["queries"], job["repeats"])
    worker_reply(job, result)


# --- the driver --------------------------------------------------------------------------


def summary(result: dict) -> dict:
    rows = result["rows"]

    def median(values: list[float]) -> float:
        return round(statistics.median(values) / 1e3, 4)

    overhead = sorted(r["overhead_us"] for r in rows)
    encoder_direct = [r["encoder_direct_us"] for r in rows if r["encoder_direct_us"] is not None]
    return {
        "overhead_ms_p50": median(overhead),
        "overhead_ms_p90": round(overhead[int(0.9 * (len(overhead) - 1))] / 1e3, 4),
        "end_to_end_ms_p50": median([r["end_to_end_us"] for r in rows]),
        "encoder_in_call_ms_p50": median([r["encoder_in_call_us"] for r in rows]),
        "encoder_direct_ms_p50": median(encoder_direct) if encoder_direct else 0.0,
        "direct_ms_p50": {
            name: median([r["direct_us"][name] for r in rows]) for name in rows[0]["direct_us"]
        },
    }


def compare(before: list[list], after: list[list]) -> dict:
    """How many queries both versions answered with the same ids in the same order, and how
    far apart the scores of those queries' hits are."""
    same = [
        (old, new)
        for old, new in zip(before, after, strict=True)
        if [i for i, _ in old] == [i for i, _ in new]
    ]
    gaps = [abs(a - b) for old, new in same for (_, a), (_, b) in zip(old, new, strict=True)]
    return {
        "same_ids_queries": len(same),
        "queries": len(before),
        "max_score_difference": max(gaps, default=None),
    }


def build(args: argparse.Namespace, code: Code, model: Path, scratch: Path) -> Path:
    """The index of ``code``, built by its own `retriever index` under ``scratch``."""
    folder = scratch / f"index-{code.side}"
    limit = ["--limit", str(args.limit)] if args.limit else []
    argv = ["-q", "index", str(args.dataset), "--out", str(folder), "--model", str(model)]
    cache = own_cache(code, scratch)
    built = run_cli(code, [*argv, *BUILD_FLAGS, *limit], cwd=scratch, **THREADS_ENV, **cache)
    print(f"{code.side} index built in {built.seconds:.0f} s", flush=True)
    return folder


def measure_methods(args: argparse.Namespace, scratch: Path) -> tuple[dict, list[Code]]:
    """Every method searched by both codes, one after the other, each on its own index."""
    codes = code_trees(args.before, args.after, scratch)
    model = save_tiny_model(scratch / "tiny-model")
    folders = {code.side: build(args, code, model, scratch) for code in codes}
    queries = test_queries(args.dataset, args.queries)
    methods: dict[str, dict] = {}
    for method in args.methods.split(","):
        found = {}
        for code in codes:
            job = {
                "index": str(folders[code.side]),
                "method": method,
                "queries": queries,
                "repeats": args.repeats,
            }
            env = {**THREADS_ENV, **own_cache(code, scratch)}
            result = run_worker(__file__, code, job, scratch, **env)
            found[code.side] = result["hits"]
            methods.setdefault(method, {})[code.side] = {
                **summary(result),
                "per_query": result["rows"],
            }
            print(method, code.side, json.dumps(summary(result)), flush=True)
        methods[method].update(compare(found["before"], found["after"]))
    return {"methods": methods, "queries": len(queries)}, codes


def score_gap(gap: float | None) -> str:
    return "" if gap is None else f"{gap:.1e}"


def method_rows(methods: dict) -> list[list[str]]:
    rows = []
    for method, versions in methods.items():
        for version in ("before", "after"):
            r = versions[version]
            direct = ", ".join(f"{name} {ms:.3f}" for name, ms in r["direct_ms_p50"].items())
            rows.append(
                [
                    method,
                    version,
                    f"{r['overhead_ms_p50']:.3f}",
                    f"{r['overhead_ms_p90']:.3f}",
                    f"{r['end_to_end_ms_p50']:.3f}",
                    f"{r['encoder_in_call_ms_p50']:.3f}",
                    f"{r['encoder_direct_ms_p50']:.3f}",
                    direct,
                    f"{versions['same_ids_queries']} of {versions['queries']}",
                    score_gap(versions["max_score_difference"]),
                ]
            )
    return rows


HOW = (
    "How overhead is measured, per query: each search is timed end to end with the "
    "encoder's own calls (`Encoder.encode_queries`, and `text_token_ids` for a sparse "
    "query) timed inside that same call, so the LLM forward, the noisy part, is "
    "subtracted exactly; the minimum over the repeats of (end to end - encoder) is "
    "taken. From it the minimum over the repeats of each unavoidable part, called "
    "directly, is subtracted: the filter applied once, the FAISS search "
    "(`Searcher.search_vectors`) at the depth the method uses (k, or 100 for a hybrid), "
    "the key-token `query_matrix` + `search`, bm25s scoring on the query's pre-tokenised "
    "words. What remains is the searcher's own work: validation, a second filter, BM25 "
    "tokenising and thread starts, fusion, reading the k documents from LMDB and building "
    "the hits. Minima estimate each cost without the machine's interference; the direct "
    "calls run with hot caches, so the overhead errs high, not low. The table gives the "
    "median and 90th percentile over queries."
)


def report_body(results: dict) -> list[str]:
    meta = results["meta"]
    after = {m: v["after"]["overhead_ms_p50"] for m, v in results["methods"].items()}
    met = all(ms <= 1.0 for ms in after.values())
    header = [
        "method", "version", "overhead p50 ms", "overhead p90 ms", "end to end p50 ms",
        "encoder in call p50 ms", "encoder direct p50 ms", "parts called directly, p50 ms",
        "queries with the same ids", "largest score difference",
    ]  # fmt: skip
    return [
        f"{meta['dataset']}, {meta['documents']}, the first {meta['queries']} test queries, "
        f"k = {meta['k']}, {meta['repeats']} timed searches per query; before = "
        f"{meta['before']}, after = {meta['after']}; one thread "
        "(OMP/MKL/OpenBLAS), each version in its own process, alternating per method, each "
        "searching the index its own code built from the same documents and model.",
        "",
        "The index is built with the tiny random Llama of the tests (hidden size 32, a "
        "400-token BPE vocabulary; filter tau 2 with the mean direction removed, Flat; "
        "key-token index "
        "K = 64, M = 16; BM25), not the real model: overhead excludes the LLM forward, and "
        "the real model would take 10+ minutes to encode the corpus on this machine.",
        "",
        HOW,
        "",
        *markdown_table(header, method_rows(results["methods"])),
        "",
        f"Goal, overhead <= 1 ms per query for every method after: {'met' if met else 'NOT met'} "
        f"(after, p50: {', '.join(f'{m} {ms:.3f} ms' for m, ms in after.items())}). "
        "'Queries with the same ids': those whose k hits have the same ids in the same order "
        "before and after; the largest absolute difference between the scores of their hits "
        "follows. The two indexes hold the same documents encoded by the same model, but "
        "each version computes the filter itself, so scores may differ in their last digits "
        "and near-ties may swap.",
    ]


def main() -> None:
    job = worker_job()
    if job is not None:
        worker(job)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_revision_options(parser)
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT, help="BEIR dataset folder")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--queries", type=int, default=300, help="first N test queries")
    parser.add_argument("--repeats", type=int, default=5, help="timed searches per query")
    parser.add_argument("--methods", default=METHODS, help="comma list (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/query-overhead", help="results folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="query-overhead-") as scratch:
        results, codes = measure_methods(args, Path(scratch))
    results["meta"] = {
        "before": codes[0].label,
        "after": codes[1].label,
        "dataset": args.dataset.name,
        "documents": f"first {args.limit:,} documents" if args.limit else "every document",
        "queries": results.pop("queries"),
        "repeats": args.repeats,
        "k": K,
        "build_flags": BUILD_FLAGS,
        "python": platform.python_version(),
    }
    write_report(
        args.out,
        "query_overhead",
        results,
        report_body(results),
        title="Per-query overhead of `Searcher.search`, before and after",
        machine=machine_record(dtype="float32"),
    )


if __name__ == "__main__":
    main()
