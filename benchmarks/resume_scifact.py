"""Kill -9 a full SciFact build at random moments, resume it, and compare with an unbroken
one; then encode the same documents as 3 slices in 3 concurrent processes and assemble them.

With the default model and the documents of --dataset (all of them unless --limit):
1. reference: one uninterrupted `retriever index` (its own store), whose shards are sized
   by time (about two minutes of encoding each, from the rate its probe measured);
2. killed: the same command with the reference's chunk size on its first attempt (so the
   two can be compared vector for vector) and none after (each rerun takes the store's),
   sent SIGKILL at --kills moments drawn uniformly (seed --seed) over the reference's
   duration, and rerun after each kill until it ends;
3. sliced (--slices N, 0 skips it): `retriever encode --shard I/N` for every I at once,
   then `index --from`.
The killed and sliced indexes must hold the reference's keys, ids and vectors. Each kill's
lost encoding is the time since the last shard written before it (or since the attempt
started); the killed path's time beyond the reference is all the work lost, restarts
included.

    python benchmarks/resume_scifact.py --kills 3 --slices 0 --out benchmarks/results/resume-scifact
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import machine_record, markdown_table, write_report
from revisions import WORKING_TREE, child_env, cli_argv, run_cli

from retriever.core.spec import DEFAULT_MODEL
from retriever.encode.models import resolve_model
from retriever.encode.weights import weights_origin


def corpus_flags(args: argparse.Namespace, chunk_size: int | None = None) -> list[str]:
    """What every encoding here shares: the documents, the model, the shard size if fixed."""
    flags = [str(args.dataset)]
    if args.limit:
        flags += ["--limit", str(args.limit)]
    if chunk_size:
        flags += ["--chunk-size", str(chunk_size)]
    if args.model:
        flags += ["--model", args.model]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    return flags


def index_argv(
    args: argparse.Namespace, scratch: Path, name: str, chunk_size: int | None = None
) -> list[str]:
    """`retriever index` into ``scratch/NAME`` with a store of its own."""
    store = ["--store", str(scratch / f"{name}.store")]
    flags = corpus_flags(args, chunk_size)
    return ["-q", "index", *flags, "--out", str(scratch / name), *store]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_argv(WORKING_TREE, argv), cwd=cwd, env=child_env(WORKING_TREE))


def shard_times(store: Path) -> list[float]:
    """When each complete shard's record was written (records are written last)."""
    return sorted(p.stat().st_mtime for p in (store / "shards").glob("[0-9]*.json"))


def kill_moments(args: argparse.Namespace, reference_seconds: float) -> list[float]:
    """--kills moments of the build, uniform over the reference's duration, sorted."""
    rng = random.Random(args.seed)
    return sorted(rng.uniform(0.05, 0.95) * reference_seconds for _ in range(args.kills))


def killed_builds(
    args: argparse.Namespace, scratch: Path, moments: list[float], chunk_size: int
) -> dict:
    """The build killed at each of ``moments`` (seconds of build time since the previous
    kill's moment), then run to its end: what each kill lost, and the seconds in all."""
    store, kills, spent, previous = scratch / "killed.store", [], 0.0, 0.0
    for moment in moments:
        fixed = chunk_size if not kills else None  # reruns take the store's own size
        started = time.time()
        child = start(index_argv(args, scratch, "killed", fixed), scratch)
        try:
            child.wait(timeout=moment - previous)
            raise SystemExit("the build ended before its kill: fewer --kills, or more documents")
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        killed_at = time.time()
        written = [t for t in shard_times(store) if t >= started]
        spent += killed_at - started
        previous = moment
        kills.append(
            {
                "moment_seconds": round(moment, 1),
                "shards_complete": len(shard_times(store)),
                "lost_encoding_seconds": round(killed_at - max(written, default=started), 1),
                "index_exists": (scratch / "killed").exists(),
            }
        )
        print("killed", kills[-1], flush=True)
        if kills[-1]["index_exists"]:  # the kill came as the build was exiting
            return {"kills": kills, "killed_total_seconds": spent}
    spent += run_cli(WORKING_TREE, index_argv(args, scratch, "killed"), cwd=scratch).seconds
    return {"kills": kills, "killed_total_seconds": spent}


def sliced_build(args: argparse.Namespace, scratch: Path, chunk_size: int) -> float:
    """Seconds to encode ``--slices`` slices in concurrent processes and assemble them."""
    started = time.perf_counter()
    store = ["--out", str(scratch / "sliced.store")]
    encoders = [
        start(
            [
                "-q",
                "encode",
                *corpus_flags(args, chunk_size),
                *store,
                "--shard",
                f"{i}/{args.slices}",
            ],
            scratch,
        )
        for i in range(args.slices)
    ]
    if any(process.wait() for process in encoders):
        raise SystemExit("a slice's `retriever encode` failed (its messages are above)")
    assemble = ["-q", "index", "--from", str(scratch / "sliced.store")]
    run_cli(WORKING_TREE, [*assemble, "--out", str(scratch / "sliced")], cwd=scratch)
    return time.perf_counter() - started


def contents(index: Path) -> tuple[Any, Any, list[str]]:
    """An index's FAISS keys, vectors (in key-map order) and docstore ids."""
    import faiss

    from retriever.parts.docstore import DocStore

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
        key = json.loads((scratch / "reference.store" / "store.json").read_text())
        chunk_size = int(key["chunk_size"])
        shards = len(shard_times(scratch / "reference.store"))
        moments = kill_moments(args, reference_seconds)
        killed = killed_builds(args, scratch, moments, chunk_size)
        reference = contents(scratch / "reference")
        sliced = None
        if args.slices:
            seconds = sliced_build(args, scratch, chunk_size)
            sliced = {
                "seconds": round(seconds, 1),
                **compare(reference, contents(scratch / "sliced")),
            }
        lost = killed["killed_total_seconds"] - reference_seconds
        return {
            "documents": key["source"]["count"],
            "chunk_size": chunk_size,
            "shards": shards,
            "kills": killed["kills"],
            "reference_seconds": round(reference_seconds, 1),
            "killed_total_seconds": round(killed["killed_total_seconds"], 1),
            "lost_seconds": round(lost, 1),
            "lost_seconds_per_kill": round(lost / max(len(moments), 1), 1),
            "shard_seconds": round(reference_seconds / shards, 1),
            "killed_vs_reference": compare(reference, contents(scratch / "killed")),
            "sliced_vs_reference": sliced,
            "meta": {"dtype": key["dtype"]},
        }


def report_body(args: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    kills = "; ".join(
        f"at {k['moment_seconds']:,.0f} s ({k['shards_complete']} shards complete, "
        f"{k['lost_encoding_seconds']:,.0f} s of encoding lost)"
        for k in record["kills"]
    )
    rows = []
    checks = [("killed and resumed", record["killed_vs_reference"], record["killed_total_seconds"])]
    if record["sliced_vs_reference"]:
        sliced = record["sliced_vs_reference"]
        checks.append((f"{args.slices} slices at once", sliced, sliced["seconds"]))
    for name, check, seconds in checks:
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
        f"{record['documents']:,} documents of {args.dataset.name} "
        f"({record['meta']['dtype']}). Reference (unbroken) "
        f"build: {record['reference_seconds']:,.1f} s in {record['shards']} shards of "
        f"{record['chunk_size']:,} documents (sized by time), about "
        f"{record['shard_seconds']:,.1f} s a shard. Killed (SIGKILL) {kills}; then rerun to its "
        f"end: {record['lost_seconds']:,.1f} s lost in all, restarts included "
        f"({record['lost_seconds_per_kill']:,.1f} s per kill).",
        "",
        *markdown_table(header, rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N documents (all)")
    parser.add_argument("--kills", type=int, default=3, help="kills at random moments")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument(
        "--slices", type=int, default=3, help="concurrent `encode --shard` processes (0: none)"
    )
    parser.add_argument("--model", default=None, help="model to encode with (default: the CLI's)")
    parser.add_argument("--batch-size", type=int, default=None, help="texts per forward pass")
    parser.add_argument("--out", default="benchmarks/results/resume-scifact", help="results folder")
    args = parser.parse_args()
    record = measure(args)
    weights = weights_origin(resolve_model(args.model or DEFAULT_MODEL))
    write_report(
        args.out,
        "resume",
        record,
        report_body(args, record),
        title="Resumable builds",
        machine=machine_record(dtype=record["meta"]["dtype"], weights=weights),
    )


if __name__ == "__main__":
    main()
