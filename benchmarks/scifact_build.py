"""The full SciFact build with the default model, before and after, in one run.

Runs `retriever index ../shared/datasets/scifact` (SmolLM2-135M, default settings) with
the code of git revision --before (a temporary worktree) and with this checkout, one
after the other; records each build's wall time and peak RSS (os.wait4), evaluates both
indexes with their own `retriever eval`, and compares their vectors row by row.

    .venv/bin/python benchmarks/scifact_build.py --before 8cf8c1c \
        --out benchmarks/results/scifact-build
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worktree import checkout  # benchmarks/ is on the path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"


def run(code: Path, argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """``retriever ARGV`` with ``code`` first on the path: (seconds, peak RSS MiB, stdout)."""
    program = f"import sys; from retriever.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", program], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    stdout = child.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"retriever {' '.join(argv)} failed with {code}")
    return seconds, usage.ru_maxrss / 1024, stdout


def index_vectors(path: Path):
    """Vectors in document order, from a Flat index (plain or with an ID map)."""
    import faiss
    import numpy as np

    loaded = faiss.read_index(str(path / "index.faiss"))  # owns what downcast views
    index = faiss.downcast_index(loaded)
    if isinstance(index, faiss.IndexIDMap2):
        keys = faiss.vector_to_array(index.id_map)
        vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        return vectors[np.argsort(keys)]
    return index.reconstruct_n(0, index.ntotal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--out", default="benchmarks/results/scifact-build")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory(prefix="scifact-build-") as scratch:
        scratch = Path(scratch)
        with checkout(args.before, scratch / "before") as before:
            # Convert and hash the default model once, outside the timed builds.
            run(
                ROOT,
                ["index", str(DATASET), "--out", str(scratch / "warm"), "--limit", "2"],
                scratch,
            )
            for version, code in (("before", before), ("after", ROOT)):
                folder = scratch / f"index-{version}"
                argv = ["index", str(DATASET), "--out", str(folder)]
                if version == "after":
                    # Encoded afresh (--restart) into the default store, which later
                    # `retriever index` and `retriever bench` runs of SciFact then reuse.
                    argv += ["--restart"]
                seconds, rss, _ = run(code, argv, scratch)
                report = scratch / f"{version}-eval.json"
                run(code, ["-q", "eval", str(folder), str(DATASET), "--json", str(report)], scratch)
                row = json.loads(report.read_text())["rows"][0]
                results[version] = {
                    "seconds": round(seconds, 1),
                    "peak_rss_mib": round(rss, 1),
                    "ndcg_at_10": row["ndcg_at_10"],
                    "recall_at_100": row["recall_at_100"],
                    "index_bytes": row["index_bytes"],
                }
                print(version, json.dumps(results[version]), flush=True)
            old = index_vectors(scratch / "index-before")
            new = index_vectors(scratch / "index-after")
            results["vectors"] = {
                "rows": [len(old), len(new)],
                "max_abs_difference": float(np.abs(old - new).max()),
                "identical": bool(np.array_equal(old, new)),
            }
    command = "python " + shlex.join(["benchmarks/scifact_build.py", *sys.argv[1:]])
    results["meta"] = {
        "command": command,
        "before": args.before,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    (out / "scifact_build.json").write_text(json.dumps(results, indent=2) + "\n")
    b, a, v = results["before"], results["after"], results["vectors"]
    lines = [
        "# Full SciFact build, before and after",
        "",
        f"`{command}`",
        "",
        "`retriever index ../shared/datasets/scifact` with the default settings (SmolLM2-135M, "
        f"dtype auto, PromptEOL, mean pooling, edge tau 2, Flat); {results['meta']['machine']}.",
        "",
        "| version | wall s | peak RSS MiB | nDCG@10 | Recall@100 | index bytes |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['seconds']:,.1f} | {r['peak_rss_mib']:,.0f} | {r['ndcg_at_10']:.4f} "
            f"| {r['recall_at_100']:.4f} | {r['index_bytes']:,} |"
            for name, r in (("before", b), ("after", a))
        ),
        "",
        f"Vectors: {v['rows'][0]} and {v['rows'][1]} rows; identical: {v['identical']}; "
        f"largest absolute difference {v['max_abs_difference']:.3g}.",
    ]
    (out / "scifact_build.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
