"""`retriever serve` under load: requests/s and latency from 1 to 64 clients, a mixed run,
the batching ceiling, unbatched serving, and a queue past its bound.

Builds the default index (EmbedFilter defaults, Flat) of the dataset's first --limit
documents from the benchmarks' embedding store, and starts `retriever serve` on it in a
process of its own on 127.0.0.1. The clients run in another process (this script again,
with --generate), each a thread with its own keep-alive connection, sending the judged test
queries to `GET /search` (k = 10); that process's CPU time is counted, since on a small
machine it competes with the server. Measured in the same run:

- the ceiling: the same queries encoded in batches of --batch-queries against one at a time;
- the levels: --clients concurrent clients, with the server's CPU time and its worker's
  forward-pass time (`/stats`) over each;
- the mixed run: one client sending 256-query `/batch_search` requests while 8 send single
  queries;
- the answers at 16 clients against `Searcher.search` of each query alone;
- unbatched (`--batch-queries 1`) at 16 clients: where the time of a lone forward goes when
  requests queue;
- overload: 64 clients against `--max-queue 8`: every request answered, 503 past the bound.

    python benchmarks/serve_load.py --out benchmarks/results/serve-load
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report
from revisions import WORKING_TREE, Code, child_env, cli_argv, code_at, git, run_cli

from retriever.index.manifest import current_manifest

K = 10
MIXED_SINGLE_CLIENTS = 8
MIXED_BATCH = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--limit", type=int, default=None, help="index the first N documents")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", default="1,4,16,64", help="comma list of client counts")
    parser.add_argument("--requests", type=int, default=160, help="requests per level")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the levels are run in turn this many times, then pooled (default: %(default)s)",
    )
    parser.add_argument("--batch-queries", type=int, default=16, help="the server's batch size")
    parser.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="also serve this git revision's code, unbatched as it was, at 1 and 16 clients",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.generate and args.out is None:
        parser.error("--out is required")
    return args


# --- the load generator (its own process) ------------------------------------------------


def _single(connection: http.client.HTTPConnection, text: str) -> tuple[float, int, Any]:
    path = "/search?" + urllib.parse.urlencode({"query": text, "k": K})
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = json.loads(response.read())
    return time.perf_counter() - started, response.status, body


def _batch(connection: http.client.HTTPConnection, texts: list[str]) -> tuple[float, int]:
    queries = {str(i): text for i, text in enumerate(texts)}
    started = time.perf_counter()
    connection.request(
        "POST",
        "/batch_search",
        body=json.dumps({"queries": queries, "k": K}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    response.read()
    return time.perf_counter() - started, response.status


def _client(port: int, texts: list[str], out: list, until: threading.Event | None) -> None:
    """Send ``texts`` in turn (round and round while ``until`` is not set, if given)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    turn = 0
    while turn < len(texts) or (until is not None and not until.is_set()):
        seconds, status, body = _single(connection, texts[turn % len(texts)])
        hits = [(hit["id"], hit["score"]) for hit in body.get("hits", [])]
        out.append((texts[turn % len(texts)], seconds, status, hits))
        turn += 1
        if status != 200:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        if until is not None and turn >= len(texts) and until.is_set():
            break


def generate(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job``'s clients; return every single request's (text, seconds, status, hits)
    and every batch's (seconds, status), with this process's CPU seconds."""
    port, texts, clients = job["port"], job["texts"], job["clients"]
    singles: list = []
    batches: list = []
    done = threading.Event() if job.get("batches") else None
    threads = [
        threading.Thread(target=_client, args=(port, texts[c::clients], singles, done))
        for c in range(clients)
    ]
    if done is not None:
        threads.append(threading.Thread(target=_batch_client, args=(port, job, batches, done)))
    cpu, started = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "singles": singles,
        "batches": batches,
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu,
    }


def _batch_client(port: int, job: dict[str, Any], out: list, done: threading.Event) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    texts = job["texts"]
    try:
        for turn in range(job["batches"]):
            start = turn * MIXED_BATCH
            part = [texts[(start + i) % len(texts)] for i in range(MIXED_BATCH)]
            out.append(_batch(connection, part))
    finally:
        done.set()


def run_generator(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` in a process of its own: this script with --generate."""
    done = subprocess.run(
        [sys.executable, __file__, "--generate"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    )
    return json.loads(done.stdout)


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_server(
    index: Path, dtype: str, *extra: str, code: Code = WORKING_TREE
) -> Iterator[tuple[int, int]]:
    """``(port, pid)`` of `retriever serve` on ``index``, stopped by SIGTERM at the end."""
    port = free_port()
    argv = ["-q", "serve", str(index), "--port", str(port), "--dtype", dtype, *extra]
    server = subprocess.Popen(cli_argv(code, argv), env=child_env(code))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                get_json(port, "/health")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not answer /health") from None
                time.sleep(0.5)
        yield port, server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def load_level(
    port: int, pid: int, queries: list[str], clients: int, requests: int, **job: Any
) -> dict[str, Any]:
    """``requests`` searches over ``clients`` clients, with the server's CPU and batching."""
    texts = [queries[i % len(queries)] for i in range(max(requests, 2 * clients))]
    before, cpu = _stats(port), cpu_seconds(pid)
    result = run_generator({"port": port, "texts": texts, "clients": clients, **job})
    server_cpu = cpu_seconds(pid) - cpu
    after = _stats(port)
    return summarise(clients, result, server_cpu, before, after)


def _stats(port: int) -> dict[str, float]:
    """The worker's counters; zeros from a server before /stats (an older revision)."""
    found = get_json(port, "/stats").get("batching")
    return found or {"batches": 0, "queries": 0, "encode_s": 0.0}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0 if seconds else np.zeros(1)
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


def summarise(
    clients: int, result: dict[str, Any], server_cpu: float, before: dict, after: dict
) -> dict[str, Any]:
    singles = result["singles"]
    ok = [seconds for _, seconds, status, _ in singles if status == 200]
    row = {
        "clients": clients,
        "requests": len(singles),
        "errors": sum(status not in (200, 503) for _, _, status, _ in singles),
        "refused_503": sum(status == 503 for _, _, status, _ in singles),
        "requests_per_second": len(ok) / result["wall_s"],
        "latencies": ok,
        **_percentiles(ok),
        "batch_requests": [{"seconds": s, "status": st} for s, st in result["batches"]],
        "answers": [(text, hits) for text, _, status, hits in singles if status == 200],
        "wall_s": result["wall_s"],
        "queries_encoded": after["queries"] - before["queries"],
        "batches": after["batches"] - before["batches"],
        "encode_s": after["encode_s"] - before["encode_s"],
        "server_cpu_s": server_cpu,
        "generator_cpu_s": result["cpu_s"],
    }
    return _rates(row)


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    """What a level's counts mean: batch size, forward time and CPU use per second."""
    wall = row["wall_s"]
    return {
        **row,
        "mean_batch_queries": row["queries_encoded"] / row["batches"] if row["batches"] else 0.0,
        "forward_share": row["encode_s"] / wall,
        "forward_ms_per_query": 1000 * row["encode_s"] / max(row["queries_encoded"], 1),
        "server_cores": row["server_cpu_s"] / wall,
        "generator_cores": row["generator_cpu_s"] / wall,
    }


# --- what is measured in this process ----------------------------------------------------


def build(args: argparse.Namespace, folder: Path) -> tuple[Path, Any, list[str]]:
    """The default index of the dataset's first --limit documents, from the benchmarks'
    store; the encoder; the judged queries."""
    from retriever import EncoderConfig, build_index
    from retriever.data.datasets import load_qrels, load_queries, scan_corpus
    from retriever.encode.encoder import Encoder
    from retriever.evaluation.bench.run import BENCH_STORE
    from retriever.evaluation.metrics import judged_queries
    from retriever.index.options import BuildOptions
    from retriever.store.encoding import encode_corpus

    config = EncoderConfig(prompt="prompteol", pooling="mean", max_length=256)
    encoder = Encoder.load(args.model, config, dtype=args.dtype, batch_size=16)
    corpus = scan_corpus(args.dataset, limit=args.limit)
    store = encode_corpus(encoder, corpus, **BENCH_STORE)
    options = BuildOptions(from_store=store.folder, limit=args.limit)
    index = build_index(None, folder / "index", None, options, encoder=encoder)
    queries = judged_queries(load_queries(args.dataset), load_qrels(args.dataset, "test"))
    return index, encoder, list(queries.values())


def forward_gain(encoder: Any, queries: list[str], size: int, rounds: int) -> dict[str, Any]:
    """Milliseconds per query encoded one at a time and in batches of ``size``, in
    alternating rounds (this machine's speed drifts): the most batching can gain here."""
    if not queries:
        raise SystemExit("the dataset has no judged test queries to send")
    encoder.encode_queries(queries[:size])  # warm-up
    alone, batched = [], []
    for turn in range(rounds):
        # Round after round over the queries again where a small dataset runs out of them.
        turn_range = range(turn * 2 * size, (turn + 1) * 2 * size)
        texts = [queries[i % len(queries)] for i in turn_range]
        started = time.perf_counter()
        for text in texts:
            encoder.encode_queries([text])
        alone.append(1000 * (time.perf_counter() - started) / len(texts))
        started = time.perf_counter()
        for start in range(0, len(texts), size):
            encoder.encode_queries(texts[start : start + size])
        batched.append(1000 * (time.perf_counter() - started) / len(texts))
    gains = [a / b for a, b in zip(alone, batched, strict=True)]
    return {
        "alone_ms": float(np.mean(alone)),
        "batched_ms": float(np.mean(batched)),
        "gain": float(np.mean(alone) / np.mean(batched)),
        "round_gains": gains,
        "batch": size,
        "queries": rounds * 2 * size,
    }


def rounds_of(port: int, pid: int, queries: list[str], levels: list[int], args: Any) -> list:
    """Every level in turn, --rounds times over (so a drift in the machine's speed falls on
    every level alike), each level's rounds then pooled."""
    per_round = max(1, args.requests // args.rounds)
    done: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    for _ in range(args.rounds):
        for clients in levels:
            done[clients].append(load_level(port, pid, queries, clients, per_round))
    return [pooled(parts) for parts in done.values()]


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's rounds as one: counts added, latencies pooled, rates over the summed
    wall time; each round's requests/s kept to show the spread."""
    latencies = [s for part in parts for s in part["latencies"]]
    wall = sum(part["wall_s"] for part in parts)
    ok = len(latencies)
    row = {
        "clients": parts[0]["clients"],
        "requests": sum(part["requests"] for part in parts),
        "errors": sum(part["errors"] for part in parts),
        "refused_503": sum(part["refused_503"] for part in parts),
        "requests_per_second": ok / wall,
        "round_requests_per_second": [part["requests_per_second"] for part in parts],
        **_percentiles(latencies),
        "batch_requests": [b for part in parts for b in part["batch_requests"]],
        "answers": [a for part in parts for a in part["answers"]],
        "wall_s": wall,
    }
    for key in ("queries_encoded", "batches", "encode_s", "server_cpu_s", "generator_cpu_s"):
        row[key] = sum(part[key] for part in parts)
    return _rates(row)


def compare_answers(index: Path, encoder: Any, answers: list) -> dict[str, float]:
    """Served (batched) answers against `Searcher.search` of each query alone."""
    from retriever import Searcher

    searcher = Searcher.load(index, encoder=encoder)
    same_ids, worst = 0, 0.0
    try:
        for text, hits in answers:
            alone = searcher.search(text, k=K)
            same_ids += [doc for doc, _ in hits] == list(alone.ids)
            served = np.array([score for _, score in hits])
            worst = max(worst, float(np.abs(served - alone.scores).max()))
    finally:
        searcher.close()
    return {"answers": len(answers), "same_ids": same_ids, "max_score_difference": worst}


def measure(args: argparse.Namespace, scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every run's results, and the machine record of the server's encoder."""
    index, encoder, queries = build(args, scratch)
    ceiling = forward_gain(encoder, queries, args.batch_queries, args.rounds)
    levels = [int(c) for c in args.clients.split(",")]
    batching = ("--batch-queries", str(args.batch_queries))
    with running_server(index, args.dtype, *batching) as (port, pid):
        load_level(port, pid, queries, 1, 8)  # warm-up: the first requests pay one-time costs
        rows = rounds_of(port, pid, queries, levels, args)
        mixed = load_level(port, pid, queries, MIXED_SINGLE_CLIENTS, 8, batches=2)
    with running_server(index, args.dtype, "--batch-queries", "1") as (port, pid):
        load_level(port, pid, queries, 1, 8)
        unbatched = rounds_of(port, pid, queries, [1, 16], args)
    with running_server(index, args.dtype, *batching, "--max-queue", "8") as (port, pid):
        overload = load_level(port, pid, queries, 64, 4 * 64)
    old = old_revision(args, queries, scratch) if args.before else None
    at_16 = next((row for row in rows if row["clients"] == 16), rows[-1])
    answers = compare_answers(index, encoder, at_16["answers"])
    for row in [*rows, mixed, *unbatched, overload, *(old or [])]:
        row.pop("answers")
        row.pop("latencies", None)
    meta = {
        "model": args.model,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "documents": current_manifest(index).count,
        "queries": len(queries),
        "k": K,
        "batch_queries": args.batch_queries,
        "before": git("rev-parse", args.before) if args.before else None,
    }
    record = {
        "meta": meta,
        "ceiling": ceiling,
        "levels": rows,
        "mixed": mixed,
        "unbatched": unbatched,
        "overload": overload,
        "answers": answers,
        "before": old,
    }
    return record, encoder_machine_record(encoder)


def old_revision(
    args: argparse.Namespace, queries: list[str], scratch: Path
) -> list[dict[str, Any]]:
    """The --before revision's server (one lock, a forward per request) at 1 and 16 clients,
    over the same documents indexed by its own code: the index format has moved since."""
    code = code_at("before", args.before, scratch)
    index = scratch / "index-before"
    limit = ["--limit", str(args.limit)] if args.limit else []
    argv = ["-q", "index", str(args.dataset), "--out", str(index), "--model", args.model]
    run_cli(code, [*argv, "--dtype", args.dtype, *limit], cwd=scratch)
    with running_server(index, args.dtype, code=code) as (port, pid):
        load_level(port, pid, queries, 1, 8)
        return rounds_of(port, pid, queries, [1, 16], args)


def goals(record: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(goal, measured, the bound no scheduler can pass here, met) for each serving goal.

    With N clients each sending its next request when the last is answered, throughput X
    and mean latency W obey N = X * W (Little's law); X is at most one query per batched
    forward time t_b, so W, and p95 with it, is at least N * t_b.
    """
    by_clients = {row["clients"]: row for row in record["levels"]}
    one = by_clients[1]
    sixteen = by_clients.get(16, record["levels"][-1])  # a quick run may stop short of 16
    gain, batched_ms = record["ceiling"]["gain"], record["ceiling"]["batched_ms"]
    target = 2.5 if gain >= 2.5 else 0.85 * gain
    speedup = sixteen["requests_per_second"] / one["requests_per_second"]
    per_round = [
        many / alone
        for many, alone in zip(
            sixteen["round_requests_per_second"], one["round_requests_per_second"], strict=True
        )
    ]
    mixed_p95 = record["mixed"]["p95_ms"]
    overload = record["overload"]
    clean = all(row["errors"] == 0 and row["refused_503"] == 0 for row in record["levels"])
    return [
        (
            f"{sixteen['clients']} clients >= {target:.2f}x one client's requests/s "
            f"(ceiling {gain:.2f}x)",
            f"{speedup:.2f}x (rounds {min(per_round):.2f}-{max(per_round):.2f}x)",
            f"{gain:.2f}x",
            speedup >= target,
        ),
        (
            f"p95 at {sixteen['clients']} clients < 4x one client's p50 "
            f"({4 * one['p50_ms']:.0f} ms)",
            f"{sixteen['p95_ms']:.0f} ms",
            f"{sixteen['clients'] * batched_ms:.0f} ms",
            sixteen["p95_ms"] < 4 * one["p50_ms"],
        ),
        (
            f"mixed run: single queries' p95 < 3x the unloaded p50 ({3 * one['p50_ms']:.0f} ms)",
            f"{mixed_p95:.0f} ms",
            f"{MIXED_SINGLE_CLIENTS * batched_ms:.0f} ms",
            mixed_p95 < 3 * one["p50_ms"],
        ),
        ("0 errors below the queue bound", "0" if clean else "some", "0", clean),
        (
            "past the bound: 503s, no other error, every request answered",
            f"{overload['refused_503']} of {overload['requests']} were 503, "
            f"{overload['errors']} errors",
            "",
            overload["errors"] == 0 and overload["refused_503"] > 0,
        ),
    ]


def _spread(values: list[float], unit: str) -> str:
    return ", ".join(f"{value:.2f}{unit}" for value in values)


def _row(label: str, row: dict[str, Any]) -> list[str]:
    # An older revision's server has no /stats: its forward columns are unknown.
    forward = (
        [
            f"{row['mean_batch_queries']:.1f}",
            f"{row['forward_ms_per_query']:.1f}",
            f"{row['forward_share']:.2f}",
        ]
        if row["mean_batch_queries"]
        else ["n/a"] * 3
    )
    return [
        label,
        str(row["requests"]),
        f"{row['requests_per_second']:.1f}",
        f"{row['p50_ms']:.0f}",
        f"{row['p95_ms']:.0f}",
        f"{row['p99_ms']:.0f}",
        str(row["errors"]),
        str(row["refused_503"]),
        *forward,
        f"{row['server_cores']:.2f}",
        f"{row['generator_cores']:.2f}",
    ]


HEADER = [
    "clients",
    "requests",
    "requests/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "503",
    "queries per forward",
    "forward ms per query",
    "worker busy in forward",
    "server cores",
    "load generator cores",
]


def report_body(record: dict[str, Any]) -> list[str]:
    meta, ceiling, answers = record["meta"], record["ceiling"], record["answers"]
    batches = record["mixed"]["batch_requests"]
    rows = [_row(str(row["clients"]), row) for row in record["levels"]]
    rows.append(
        _row(
            f"mixed: {MIXED_SINGLE_CLIENTS} single + 1 sending {MIXED_BATCH}-query batches",
            record["mixed"],
        )
    )
    rows += [_row(f"unbatched, {row['clients']}", row) for row in record["unbatched"]]
    rows.append(_row("64 against --max-queue 8", record["overload"]))
    if record.get("before"):
        label = f"git {record['meta']['before'][:12]}"
        rows += [_row(f"{label}, {row['clients']}", row) for row in record["before"]]
    return [
        f"Model {meta['model']} ({meta['dtype']}), default index "
        f"(EmbedFilter defaults, Flat) of the first {meta['documents']:,} documents; the "
        f"{meta['queries']} judged test queries in turn, `GET /search` with k = {meta['k']} "
        "over loopback, one keep-alive connection per client. Server, load generator and "
        "this script are separate processes on the same cores.",
        "",
        f"Ceiling, in this run: encoding a query alone takes {ceiling['alone_ms']:.1f} ms, in "
        f"batches of {ceiling['batch']} {ceiling['batched_ms']:.1f} ms per query: "
        f"{ceiling['gain']:.2f}x (rounds: {_spread(ceiling['round_gains'], 'x')}). Each level "
        f"below ran in {len(record['levels'][0]['round_requests_per_second'])} rounds, taken "
        "in turn with the other levels; requests/s per round: "
        + "; ".join(
            f"{row['clients']} clients {_spread(row['round_requests_per_second'], '')}"
            for row in record["levels"]
        )
        + ".",
        "",
        *markdown_table(HEADER, rows),
        "",
        f"Mixed run: the {MIXED_BATCH}-query batches took "
        + ", ".join(f"{b['seconds']:.1f} s ({b['status']})" for b in batches)
        + ".",
        "",
        f"Answers at 16 clients against `Searcher.search` alone: {answers['same_ids']} of "
        f"{answers['answers']} with the same ids in the same order; scores differ by at most "
        f"{answers['max_score_difference']:.2e}.",
        "",
        "The bound is what no scheduler can pass on this machine: a speed-up is at most the "
        "forward's own batch gain, and a latency is at least clients x the batched "
        "milliseconds per query (Little's law, for clients that each wait for their answer).",
        "",
        *markdown_table(
            ["goal", "measured", "bound here", "met"],
            [[g, m, bound, "yes" if ok else "no"] for g, m, bound, ok in goals(record)],
        ),
    ]


def main() -> None:
    args = parse_args()
    if args.generate:
        print(json.dumps(generate(json.loads(sys.stdin.read()))))
        return
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        record, machine = measure(args, Path(scratch))
    write_report(
        args.out,
        "serve_load",
        record,
        report_body(record),
        title="retriever serve under load",
        machine=machine,
    )


if __name__ == "__main__":
    main()
