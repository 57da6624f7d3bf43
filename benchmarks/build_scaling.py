"""Peak memory and speed of `retriever index` against the collection size, before/after.

Builds a dense index (tau 2, Flat) of N synthetic documents with a tiny random Llama
(hidden size 32, so that 10^6 documents encode in minutes) twice per N: with the code
of git revision --before and with --after (default: this working tree), one after the
other in one run. Each build is its own process, driven through that revision's own
`retriever index`; its peak RSS is the kernel's ru_maxrss for that process (os.wait4),
its wall time includes the model load.

    python benchmarks/build_scaling.py --before 8cf8c1c --sizes 10000,100000,1000000 \
        --out benchmarks/results/build-scaling
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from inputs import save_tiny_model, write_synthetic_corpus
from report import machine_record, markdown_table, write_report
from revisions import Code, add_revision_options, code_trees, run_cli

# The dense part's file: its name has not changed since the revisions compared here.
from retriever.parts.dense.faiss_index import INDEX_FILE

BUILD_FLAGS = ["--tau", "2", "--dtype", "float32", "--max-length", "64", "--batch-size", "64"]


def build(
    code: Code, corpus: Path, count: int, model: Path, out: Path, cache: Path
) -> dict[str, Any]:
    """One `retriever index` of ``code`` over ``count`` documents in a child process: wall
    seconds, peak RSS and the FAISS file's bytes. The file is measured on disk, since this
    code no longer reads the manifests that older revisions wrote."""
    argv = ["index", str(corpus), "--out", str(out), "--model", str(model), *BUILD_FLAGS]
    measured = run_cli(code, argv, cwd=cache, RETRIEVER_CACHE=str(cache))
    return {
        "seconds": round(measured.seconds, 2),
        "docs_per_second": round(count / measured.seconds, 1),
        "peak_rss_mib": round(measured.peak_rss_mib, 1),
        "index_bytes": (out.resolve() / INDEX_FILE).stat().st_size,
        "count": count,
    }


def measure(args: argparse.Namespace, scratch: Path) -> tuple[list[dict], list[Code]]:
    """Every size built by both codes, each into an embedding cache of its own."""
    codes = code_trees(args.before, args.after, scratch)
    model = save_tiny_model(scratch / "tiny-model")
    rows = []
    for n in (int(size) for size in args.sizes.split(",")):
        corpus = write_synthetic_corpus(scratch / f"corpus-{n}.jsonl", n)
        for code in codes:
            cache = scratch / f"cache-{code.side}-{n}"
            cache.mkdir()
            result = build(code, corpus, n, model, scratch / f"{code.side}-{n}", cache)
            rows.append({"n": n, "version": code.side, **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows, codes


def trend(rows: list[dict]) -> list[str]:
    """The after builds' peak RSS as a straight line in N, extrapolated to 10M documents."""
    import numpy as np

    after = [r for r in rows if r["version"] == "after"]
    if len(after) < 2:
        return []
    ns = np.array([r["n"] for r in after], dtype=float)
    slope, intercept = np.polyfit(ns, np.array([r["peak_rss_mib"] for r in after]), 1)
    index_growth = (after[-1]["index_bytes"] - after[0]["index_bytes"]) / (ns[-1] - ns[0])
    return [
        "",
        f"After, least-squares line through the points: peak RSS = {intercept:,.0f} MiB "
        f"+ {slope * 1e6:,.1f} MiB per million documents (index bytes alone grow "
        f"{index_growth * 1e6 / 2**20:,.1f} MiB per million); extrapolated to 10M documents: "
        f"{intercept + slope * 1e7:,.0f} MiB.",
    ]


def report_body(rows: list[dict], meta: dict[str, Any]) -> list[str]:
    table = markdown_table(
        ["N", "version", "peak RSS MiB", "wall s", "docs/s", "index bytes"],
        (
            [
                f"{r['n']:,}",
                r["version"],
                f"{r['peak_rss_mib']:,.0f}",
                f"{r['seconds']:,.1f}",
                f"{r['docs_per_second']:,.0f}",
                f"{r['index_bytes']:,}",
            ]
            for r in rows
        ),
    )
    return [
        "Tiny random Llama (hidden 32), synthetic documents, dense Flat index at tau 2; "
        f"before = {meta['before']}, after = {meta['after']}.",
        "",
        *table,
        *trend(rows),
        "",
        "![peak memory and throughput against N](build_scaling.png)",
    ]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_revision_options(parser)
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="comma list of collection sizes"
    )
    parser.add_argument("--out", default="benchmarks/results/build-scaling", help="results folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="build-scaling-") as scratch:
        rows, codes = measure(args, Path(scratch))
    meta = {
        "before": codes[0].label,
        "after": codes[1].label,
        "flags": BUILD_FLAGS,
    }
    out = write_report(
        args.out,
        "build_scaling",
        {"meta": meta, "rows": rows},
        report_body(rows, meta),
        title="Build memory and speed against N",
        machine=machine_record(dtype="float32"),
    )
    plot(rows, out / "build_scaling.png")


if __name__ == "__main__":
    main()
