"""What a BM25 index costs in memory while it is built, per document and per token.

Builds the BM25 part of an index over SciFact (and over N copies of it) the way a build
does (chunks of 4,096 documents into one builder) and reports the process's peak RSS
above what it held before, against documents and tokens.

    .venv/bin/python benchmarks/bm25_memory.py --copies 1,4 --out benchmarks/results/bm25-memory
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"

CHILD = """
import json, resource, sys
import numpy as np
from retriever.datasets import iter_documents, scan_corpus
from retriever.lexical import BM25Builder
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", default="1,4")
    parser.add_argument("--out", default="benchmarks/results/bm25-memory")
    args = parser.parse_args()
    rows = []
    for copies in (int(c) for c in args.copies.split(",")):
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(copies), str(DATASET)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row["bytes_per_document"] = round(row["peak_above_start_mib"] * 2**20 / row["documents"])
        row["bytes_per_token"] = round(row["peak_above_start_mib"] * 2**20 / row["tokens"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python " + shlex.join(["benchmarks/bm25_memory.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bm25_memory.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
