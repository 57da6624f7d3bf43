"""`retriever serve` under load on SciFact: requests/s and latency at 1, 4 and 16 clients.

Builds the default SciFact index (EmbedFilter defaults, Flat) from the benchmarks'
embedding store, starts `retriever serve` on it in a process of its own on 127.0.0.1,
and sends the judged test queries to `GET /search` (k = 10) from --clients concurrent
clients, each a thread with its own keep-alive HTTP connection, --requests requests per
level. Beside it, the same queries through `Searcher.search` in this process, one at a
time, with the server idle: the in-process latency the HTTP path adds to.

    python benchmarks/serve_load.py --out benchmarks/results/serve-load
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import cpu_name, machine, markdown_table, write_report
from revisions import WORKING_TREE, child_env, cli_argv

from retriever import EncoderConfig, Searcher, build_index
from retriever.data.datasets import load_qrels, load_queries, scan_corpus
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.run import BENCH_STORE
from retriever.evaluation.metrics import judged_queries, percentiles_ms
from retriever.index.options import BuildOptions
from retriever.store.encoding import encode_corpus

K = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", default="1,4,16", help="comma list of client counts")
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def build(args: argparse.Namespace, folder: Path) -> tuple[Path, Encoder, list[str]]:
    """The default index of the dataset, from the benchmarks' store; its judged queries."""
    config = EncoderConfig(prompt="prompteol", pooling="mean", max_length=256)
    encoder = Encoder.load(args.model, config, dtype=args.dtype, batch_size=16)
    store = encode_corpus(encoder, scan_corpus(args.dataset), **BENCH_STORE)
    index = build_index(
        None, folder / "index", None, BuildOptions(from_store=store.folder), encoder=encoder
    )
    queries = judged_queries(load_queries(args.dataset), load_qrels(args.dataset, "test"))
    return index, encoder, list(queries.values())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(index: Path, port: int, dtype: str) -> subprocess.Popen:
    argv = ["-q", "serve", str(index), "--port", str(port), "--dtype", dtype]
    server = subprocess.Popen(cli_argv(WORKING_TREE, argv), env=child_env(WORKING_TREE))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not answer /health within 300 s")


def client(port: int, texts: list[str], seconds: list[float]) -> None:
    """One client: its queries in turn on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for text in texts:
        path = "/search?" + urllib.parse.urlencode({"query": text, "k": K})
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        seconds.append(time.perf_counter() - started)
        if response.status != 200 or not json.loads(body)["hits"]:
            raise SystemExit(f"/search answered {response.status}: {body[:200]!r}")


def load_level(port: int, queries: list[str], clients: int, requests: int) -> dict[str, Any]:
    """``requests`` searches spread over ``clients`` threads: throughput and latency."""
    texts = [queries[i % len(queries)] for i in range(requests)]
    shares = [texts[c::clients] for c in range(clients)]
    seconds: list[list[float]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(port, share, out))
        for share, out in zip(shares, seconds, strict=True)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    every = [s for part in seconds for s in part]
    return {
        "clients": clients,
        "requests": len(every),
        "requests_per_second": len(every) / wall,
        **{f"{key}_ms": value for key, value in percentiles_ms(every).items()},
    }


def in_process(index: Path, encoder: Encoder, queries: list[str]) -> dict[str, Any]:
    """``Searcher.search`` one query at a time in this process (after 5 untimed)."""
    searcher = Searcher.load(index, encoder=encoder)
    try:
        for text in queries[:5]:
            searcher.search(text, k=K)
        seconds = []
        for text in queries:
            started = time.perf_counter()
            searcher.search(text, k=K)
            seconds.append(time.perf_counter() - started)
    finally:
        searcher.close()
    return {"queries": len(seconds), **{f"{k}_ms": v for k, v in percentiles_ms(seconds).items()}}


def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    index, encoder, queries = build(args, scratch)
    levels = [int(c) for c in args.clients.split(",")]
    port = free_port()
    server = start_server(index, port, args.dtype)
    try:
        load_level(port, queries, 1, 5)  # warm-up: the first requests pay one-time costs
        rows = [load_level(port, queries, c, args.requests) for c in levels]
    finally:
        server.terminate()
        server.wait(timeout=60)
    local = in_process(index, encoder, queries[: args.requests])
    meta = {
        "machine": f"{machine()}, {cpu_name()}",
        "model": args.model,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "documents": scan_corpus(args.dataset).count,
        "queries": len(queries),
        "k": K,
    }
    return {"meta": meta, "levels": rows, "in_process": local}


def report_body(record: dict[str, Any]) -> list[str]:
    meta, local = record["meta"], record["in_process"]
    best = max(record["levels"], key=lambda r: r["requests_per_second"])
    lines = [
        f"Machine: {meta['machine']}. Model {meta['model']} ({meta['dtype']}), default "
        f"index (EmbedFilter defaults, Flat) of {meta['documents']:,} documents; the judged "
        f"test queries in turn, `GET /search` with k = {meta['k']} over loopback, one "
        "keep-alive connection per client; the server in its own process.",
        "",
        f"In process (`Searcher.search`, one query at a time): p50 {local['p50_ms']:.1f} ms, "
        f"p95 {local['p95_ms']:.1f} ms over {local['queries']} queries.",
        "",
        f"Most requests/s: {best['requests_per_second']:.1f} at {best['clients']} clients "
        f"(the searcher serves one request at a time: more clients queue).",
        "",
    ]
    cells = [
        [
            str(r["clients"]),
            str(r["requests"]),
            f"{r['requests_per_second']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p50_ms'] / local['p50_ms']:.2f}",
        ]
        for r in record["levels"]
    ]
    header = ["clients", "requests", "requests/s", "p50 ms", "p95 ms", "p50 / in-process p50"]
    return lines + markdown_table(header, cells)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        record = measure(args, Path(scratch))
    write_report(
        args.out, "serve_load", record, report_body(record), title="retriever serve under load"
    )


if __name__ == "__main__":
    main()
