"""Kill -9 a SciFact build at several points, resume it, and compare with an unbroken one;
then encode the same documents as 3 slices in 3 concurrent processes and assemble them.

With the default model, the first --limit documents of SciFact and --chunk-size
documents per shard:
1. reference: one uninterrupted `retriever index` (its own store);
2. killed: the same command, sent SIGKILL once --kills[i] shards are complete plus half
   a shard's time (so a chunk is always in flight), rerun after each kill until it ends;
3. sliced: `retriever encode --shard I/3` for I = 0, 1, 2 at once, then `index --from`.
The killed and sliced indexes must hold the reference's keys, ids and vectors; the time
the killed path spent beyond the reference is the work lost.

    python benchmarks/resume_scifact.py --limit 1200 --chunk-size 200 --kills 1,3,5 \
        --out benchmarks/results/resume-scifact
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import machine, markdown_table, write_report
from revisions import WORKING_TREE, child_env, cli_argv, run_cli

SLICES = 3


def corpus_flags(args: argparse.Namespace) -> list[str]:
    """What every encoding here shares: the documents, the shard size, the model."""
    flags = [str(args.dataset), "--limit", str(args.limit), "--chunk-size", str(args.chunk_size)]
    if args.model:
        flags += ["--model", args.model]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    return flags


def index_argv(args: argparse.Namespace, scratch: Path, name: str) -> list[str]:
    """`retriever index` into ``scratch/NAME`` with a store of its own."""
    store = ["--store", str(scratch / f"{name}.store")]
    return ["-q", "index", *corpus_flags(args), "--out", str(scratch / name), *store]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_argv(WORKING_TREE, argv), cwd=cwd, env=child_env(WORKING_TREE))


def complete_shards(store: Path) -> int:
    return len(list((store / "shards").glob("[0-9]*.json")))


def killed_builds(args: argparse.Namespace, scratch: Path, shard_seconds: float) -> dict:
    """The build killed after each of ``--kills`` complete shards, then run to its end:
    where each kill landed, and the seconds spent over all attempts."""
    store, kills, spent = scratch / "killed.store", [], 0.0
    for target in (int(k) for k in args.kills.split(",")):
        started = time.perf_counter()
        child = start(index_argv(args, scratch, "killed"), scratch)
        while complete_shards(store) < target and child.poll() is None:
            time.sleep(0.2)
        time.sleep(shard_seconds / 2)  # a chunk in flight when the kill lands
        if child.poll() is not None:
            raise SystemExit("the build ended before its kill: give a larger --limit")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        spent += time.perf_counter() - started
        kills.append(
            {"after_shards": complete_shards(store), "index_exists": (scratch / "killed").exists()}
        )
        print("killed", kills[-1], flush=True)
    spent += run_cli(WORKING_TREE, index_argv(args, scratch, "killed"), cwd=scratch).seconds
    return {"kills": kills, "killed_total_seconds": spent}


def sliced_build(args: argparse.Namespace, scratch: Path) -> float:
    """Seconds to encode ``SLICES`` slices in concurrent processes and assemble them."""
    started = time.perf_counter()
    store = ["--out", str(scratch / "sliced.store")]
    encoders = [
        start(["-q", "encode", *corpus_flags(args), *store, "--shard", f"{i}/{SLICES}"], scratch)
        for i in range(SLICES)
    ]
    if any(process.wait() for process in encoders):
        raise SystemExit("a slice's `retriever encode` failed (its messages are above)")
    assemble = ["-q", "index", "--from", str(scratch / "sliced.store")]
    run_cli(WORKING_TREE, [*assemble, "--out", str(scratch / "sliced")], cwd=scratch)
    return time.perf_counter() - started


def contents(index: Path) -> tuple[Any, Any, list[str]]:
    """An index's FAISS keys, vectors (in key-map order) and docstore ids."""
    import faiss

    from retriever.docstore import DocStore

    loaded = faiss.read_index(str(index / "index.faiss"))  # owns what downcast views
    mapped = faiss.downcast_index(loaded)
    keys = faiss.vector_to_array(mapped.id_map)
    vectors = faiss.downcast_index(mapped.index).reconstruct_n(0, mapped.ntotal)
    with DocStore.open(index.resolve() / "docstore") as docstore:
        ids = [document.id for _, document in docstore.items()]
    return keys, vectors, ids


def compare(reference: tuple, other: tuple) -> dict[str, Any]:
    import numpy as np

    return {
        "same_keys": bool(np.array_equal(reference[0], other[0])),
        "same_ids": reference[2] == other[2],
        "identical_vectors": bool(np.array_equal(reference[1], other[1])),
        "max_abs_difference": float(np.abs(reference[1] - other[1]).max()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="resume-") as scratch:
        scratch = Path(scratch)
        reference_seconds = run_cli(
            WORKING_TREE, index_argv(args, scratch, "reference"), cwd=scratch
        ).seconds
        shard_seconds = reference_seconds / -(-args.limit // args.chunk_size)
        killed = killed_builds(args, scratch, shard_seconds)
        sliced_seconds = sliced_build(args, scratch)
        reference = contents(scratch / "reference")
        return {
            "kills": killed["kills"],
            "reference_seconds": round(reference_seconds, 1),
            "killed_total_seconds": round(killed["killed_total_seconds"], 1),
            "lost_seconds": round(killed["killed_total_seconds"] - reference_seconds, 1),
            "shard_seconds": round(shard_seconds, 1),
            "sliced_seconds": round(sliced_seconds, 1),
            "killed_vs_reference": compare(reference, contents(scratch / "killed")),
            "sliced_vs_reference": compare(reference, contents(scratch / "sliced")),
            "meta": {"machine": machine()},
        }


def report_body(args: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    kills = ", ".join(str(k["after_shards"]) for k in record["kills"])
    rows = []
    for name, key, seconds in (
        ("killed and resumed", "killed_vs_reference", record["killed_total_seconds"]),
        (f"{SLICES} slices at once", "sliced_vs_reference", record["sliced_seconds"]),
    ):
        check = record[key]
        rows.append(
            [
                name,
                f"{seconds:,.1f}",
                str(check["same_keys"]),
                str(check["same_ids"]),
                str(check["identical_vectors"]),
                f"{check['max_abs_difference']:.3g}",
            ]
        )
    header = ["build", "seconds", "same keys", "same ids", "identical vectors", "largest gap"]
    return [
        f"The first {args.limit} documents of {args.dataset.name}, shards of {args.chunk_size}; "
        f"{record['meta']['machine']}. Reference (unbroken) build: "
        f"{record['reference_seconds']:,.1f} s, about {record['shard_seconds']:,.1f} s a shard. "
        f"Killed (SIGKILL) with {kills} shards complete, then rerun to its end: "
        f"{record['lost_seconds']:,.1f} s lost in all.",
        "",
        *markdown_table(header, rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--limit", type=int, default=1200, help="first N documents")
    parser.add_argument("--chunk-size", type=int, default=200, help="documents per shard")
    parser.add_argument(
        "--kills", default="1,3,5", help="comma list: kill once this many shards are complete"
    )
    parser.add_argument("--model", default=None, help="model to encode with (default: the CLI's)")
    parser.add_argument("--batch-size", type=int, default=None, help="texts per forward pass")
    parser.add_argument("--out", default="benchmarks/results/resume-scifact", help="results folder")
    args = parser.parse_args()
    record = measure(args)
    write_report(args.out, "resume", record, report_body(args, record), title="Resumable builds")


if __name__ == "__main__":
    main()
