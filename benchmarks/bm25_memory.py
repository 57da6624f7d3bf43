"""What a BM25 index costs in memory while it is built, per document and per token.

Builds the BM25 part of an index over SciFact (and over N copies of it) the way a build
does (chunks of 4,096 documents into one builder) and reports the process's peak RSS
above what it held before, against documents and tokens. Each size is built in a fresh
process, so that one build's peak does not hide the next one's.

    python benchmarks/bm25_memory.py --copies 1,4 --out benchmarks/results/bm25-memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from inputs import ROOT, SCIFACT, dataset_path
from report import markdown_table, write_report

CHILD = """
import json, resource, sys
import numpy as np
from retriever.data.datasets import iter_documents, scan_corpus
from retriever.parts.bm25 import BM25Builder
copies = int(sys.argv[1])
texts = [d.embedding_text for d in iter_documents(scan_corpus(sys.argv[2]))]
texts = texts * copies
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
builder = BM25Builder()
for lo in range(0, len(texts), 4096):
    builder.add(np.arange(lo, lo + len(texts[lo:lo + 4096])), texts[lo:lo + 4096])
index = builder.finish()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"documents": len(texts), "tokens": builder.tokens,
                  "peak_above_start_mib": round((peak - before) / 1024, 1)}))
"""


def measure(dataset: Path, copies: int) -> dict[str, Any]:
    """One BM25 build over ``copies`` copies of the corpus, in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(copies), str(dataset)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the BM25 build of {copies} copies failed:\n{result.stderr[-2000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    held = row["peak_above_start_mib"] * 2**20
    return {
        **row,
        "bytes_per_document": round(held / row["documents"]),
        "bytes_per_token": round(held / row["tokens"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--copies", default="1,4", help="comma list: build over this many copies of the corpus"
    )
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--out", default="benchmarks/results/bm25-memory", help="results folder")
    args = parser.parse_args()
    rows = []
    for copies in (int(c) for c in args.copies.split(",")):
        rows.append(measure(args.dataset, copies))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown_table(
        ["documents", "tokens", "peak above start MiB", "bytes per document", "bytes per token"],
        (
            [
                f"{r['documents']:,}",
                f"{r['tokens']:,}",
                f"{r['peak_above_start_mib']:,.1f}",
                f"{r['bytes_per_document']:,}",
                f"{r['bytes_per_token']:.1f}",
            ]
            for r in rows
        ),
    )
    body = [
        f"{args.dataset.name}, {args.copies.replace(',', ' and ')} copies of it; chunks of 4,096 "
        "documents into one BM25 builder, as a build adds them; peak RSS of the process above "
        "what it held before.",
        "",
        *table,
    ]
    write_report(args.out, "bm25_memory", {"rows": rows}, body, title="BM25 build memory")


if __name__ == "__main__":
    main()
