"""Peak memory and speed of `retriever index` against the collection size, before/after.

Builds a dense index (tau 2, Flat) of N synthetic documents with a tiny random Llama
(hidden size 32, so that 10^6 documents encode in minutes) twice per N: with the code
of git revision --before (checked out into a temporary worktree) and with this checkout,
one after the other in one run. Each build is its own process; its peak RSS is the
kernel's ru_maxrss for that process (os.wait4), its wall time includes the model load.

    .venv/bin/python benchmarks/build_scaling.py --before 8cf8c1c \
        --sizes 10000,100000,1000000 --out benchmarks/results/build-scaling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worktree import checkout  # noqa: E402  (benchmarks/ is on the path)

from tests.conftest import TRAINING_TEXTS, save_tiny_model  # noqa: E402

WORDS = sorted({w.strip(".,:") for t in TRAINING_TEXTS for w in t.split()} - {""})
BUILD_FLAGS = ["--tau", "2", "--dtype", "float32", "--max-length", "64", "--batch-size", "64"]


def write_corpus(path: Path, n: int) -> None:
    rng = random.Random(n)
    with path.open("w") as handle:
        for i in range(n):
            words = rng.choices(WORDS, k=rng.randint(8, 30))
            record = {"_id": f"d{i}", "title": " ".join(words[:3]), "text": " ".join(words[3:])}
            handle.write(json.dumps(record) + "\n")


def run_build(code: Path, corpus: Path, model: Path, out: Path, cache: Path) -> dict:
    """One `retriever index` in a child process: wall seconds and peak RSS."""
    argv = ["index", str(corpus), "--out", str(out), "--model", str(model), *BUILD_FLAGS]
    program = f"import sys; from retriever.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(code), "RETRIEVER_CACHE": str(cache)}
    log = cache / "build.log"  # a file, not a pipe: a full pipe would stall the build
    started = time.perf_counter()
    with log.open("w") as stderr:
        # cwd outside the checkout: sys.path[0] must not shadow the code under test.
        child = subprocess.Popen(
            [sys.executable, "-c", program],
            cwd=cache,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed ({code}):\n{log.read_text()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "seconds": round(seconds, 2),
        "docs_per_second": round(manifest["documents"]["count"] / seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "index_bytes": manifest["build"]["bytes"]["index"],
        "count": manifest["documents"]["count"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the old build code")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--out", default="benchmarks/results/build-scaling")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="build-scaling-") as scratch:
        scratch = Path(scratch)
        with checkout(args.before, scratch / "before") as before:
            model = save_tiny_model(scratch / "tiny-model", seed=0)
            for n in sizes:
                corpus = scratch / f"corpus-{n}.jsonl"
                write_corpus(corpus, n)
                for version, code in (("before", before), ("after", ROOT)):
                    cache = scratch / f"cache-{version}-{n}"
                    cache.mkdir()
                    result = run_build(code, corpus, model, scratch / f"{version}-{n}", cache)
                    rows.append({"n": n, "version": version, **result})
                    print(json.dumps(rows[-1]), flush=True)
    command = "python " + shlex.join(["benchmarks/build_scaling.py", *sys.argv[1:]])
    meta = {
        "command": command,
        "before": args.before,
        "flags": BUILD_FLAGS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    (out / "build_scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_report(rows, meta, out)


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    import numpy as np

    after = [r for r in rows if r["version"] == "after"]
    lines = [
        "# Build memory and speed against N",
        "",
        f"`{meta['command']}`",
        "",
        "Tiny random Llama (hidden 32), synthetic documents, dense Flat index at tau 2; "
        f"before = git {meta['before']}, after = this checkout; {meta['machine']}.",
        "",
        "| N | version | peak RSS MiB | wall s | docs/s | index bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['version']} | {r['peak_rss_mib']:,.0f} | {r['seconds']:,.1f} "
            f"| {r['docs_per_second']:,.0f} | {r['index_bytes']:,} |"
        )
    if len(after) >= 2:
        ns = np.array([r["n"] for r in after], dtype=float)
        rss = np.array([r["peak_rss_mib"] for r in after])
        slope, intercept = np.polyfit(ns, rss, 1)
        index_growth = (after[-1]["index_bytes"] - after[0]["index_bytes"]) / (ns[-1] - ns[0])
        lines += [
            "",
            f"After, least-squares line through the points: peak RSS = {intercept:,.0f} MiB "
            f"+ {slope * 1e6:,.1f} MiB per million documents (index bytes alone grow "
            f"{index_growth * 1e6 / 2**20:,.1f}"
            " MiB per million); extrapolated to 10M documents: "
            f"{intercept + slope * 1e7:,.0f} MiB.",
        ]
    (out / "build_scaling.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "build_scaling.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for version, style in (("before", "o--"), ("after", "s-")):
        own = [r for r in rows if r["version"] == version]
        ns = [r["n"] for r in own]
        memory.plot(ns, [r["peak_rss_mib"] for r in own], style, label=version)
        speed.plot(ns, [r["docs_per_second"] for r in own], style, label=version)
    for axis, label in ((memory, "peak RSS (MiB)"), (speed, "documents / s")):
        axis.set_xscale("log")
        axis.set_xlabel("documents")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    memory.set_title("peak memory of a build")
    speed.set_title("build throughput (tiny model)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
