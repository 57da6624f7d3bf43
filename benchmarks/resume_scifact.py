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

    .venv/bin/python benchmarks/resume_scifact.py --limit 1200 --chunk-size 200 \
        --kills 1,3,5 --out benchmarks/results/resume-scifact
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"
RETRIEVER = [sys.executable, "-m", "retriever.cli"]


def contents(index: Path):
    import faiss

    from retriever.docstore import DocStore

    loaded = faiss.read_index(str(index / "index.faiss"))  # owns what downcast views
    mapped = faiss.downcast_index(loaded)
    keys = faiss.vector_to_array(mapped.id_map)
    vectors = faiss.downcast_index(mapped.index).reconstruct_n(0, mapped.ntotal)
    with DocStore.open(index.resolve() / "docstore") as docstore:
        ids = [document.id for _, document in docstore.items()]
    return keys, vectors, ids


def compare(reference: tuple, other: tuple) -> dict:
    import numpy as np

    return {
        "same_keys": bool(np.array_equal(reference[0], other[0])),
        "same_ids": reference[2] == other[2],
        "identical_vectors": bool(np.array_equal(reference[1], other[1])),
        "max_abs_difference": float(np.abs(reference[1] - other[1]).max()),
    }


def complete_shards(store: Path) -> int:
    return len(list((store / "shards").glob("[0-9]*.json")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--kills", default="1,3,5", help="kill after this many shards")
    parser.add_argument("--out", default="benchmarks/results/resume-scifact")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kills = [int(k) for k in args.kills.split(",")]
    common = [str(DATASET), "--limit", str(args.limit), "--chunk-size", str(args.chunk_size)]
    report: dict = {"kills": []}
    with tempfile.TemporaryDirectory(prefix="resume-") as scratch:
        scratch = Path(scratch)
        index_argv = lambda name: [  # noqa: E731
            "index",
            *common,
            "--out",
            str(scratch / name),
            "--store",
            str(scratch / f"{name}.store"),
        ]

        started = time.perf_counter()
        subprocess.run([*RETRIEVER, "-q", *index_argv("reference")], check=True, cwd=ROOT)
        reference_seconds = time.perf_counter() - started
        shard_seconds = reference_seconds / -(-args.limit // args.chunk_size)
        report["reference_seconds"] = round(reference_seconds, 1)

        spent = 0.0
        store = scratch / "killed.store"
        for target in kills:
            started = time.perf_counter()
            child = subprocess.Popen([*RETRIEVER, "-q", *index_argv("killed")], cwd=ROOT)
            while complete_shards(store) < target and child.poll() is None:
                time.sleep(0.2)
            time.sleep(shard_seconds / 2)
            if child.poll() is not None:
                raise SystemExit("the build ended before its kill: give a larger --limit")
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            spent += time.perf_counter() - started
            report["kills"].append(
                {
                    "after_shards": complete_shards(store),
                    "index_exists": (scratch / "killed").exists(),
                }
            )
            print("killed", report["kills"][-1], flush=True)
        started = time.perf_counter()
        subprocess.run([*RETRIEVER, "-q", *index_argv("killed")], check=True, cwd=ROOT)
        spent += time.perf_counter() - started
        report["killed_total_seconds"] = round(spent, 1)
        report["lost_seconds"] = round(spent - reference_seconds, 1)
        report["shard_seconds"] = round(shard_seconds, 1)

        started = time.perf_counter()
        sliced_store = scratch / "sliced.store"
        encoders = [
            subprocess.Popen(
                [
                    *RETRIEVER,
                    "-q",
                    "encode",
                    *common,
                    "--out",
                    str(sliced_store),
                    "--shard",
                    f"{i}/3",
                ],
                cwd=ROOT,
            )
            for i in range(3)
        ]
        if any(p.wait() for p in encoders):
            raise SystemExit("a slice failed")
        subprocess.run(
            [
                *RETRIEVER,
                "-q",
                "index",
                "--from",
                str(sliced_store),
                "--out",
                str(scratch / "sliced"),
            ],
            check=True,
            cwd=ROOT,
        )
        report["sliced_seconds"] = round(time.perf_counter() - started, 1)

        reference = contents(scratch / "reference")
        report["killed_vs_reference"] = compare(reference, contents(scratch / "killed"))
        report["sliced_vs_reference"] = compare(reference, contents(scratch / "sliced"))
    command = "python " + shlex.join(["benchmarks/resume_scifact.py", *sys.argv[1:]])
    report["meta"] = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    (out / "resume.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
