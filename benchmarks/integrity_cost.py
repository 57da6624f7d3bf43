"""What the file checks cost: at load (sizes, small files' checksums, large files' head
and tail) and in `retriever check` (every byte), on an index of a dataset's first
documents and on a synthetic FAISS index of many vectors, beside what loading costs
without them.

    python benchmarks/integrity_cost.py --dataset $SCIFACT --limit 100 \
        --out benchmarks/results/integrity-cost
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from report import encoder_machine_record, markdown_table, write_report

from retriever import BuildOptions, IndexSpec, ModelSpec, Searcher, SparseSpec, build_index
from retriever.core.spec import DEFAULT_MODEL
from retriever.index.integrity import check_files_at_load, check_index, file_problems, file_records
from retriever.index.manifest import current_manifest
from retriever.parts.dense.faiss_install import faiss


def median_seconds(step: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dataset_row(args: argparse.Namespace, scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An index of the dataset's first documents (dense, sparse, BM25), loaded with and
    without its model, against its checks; and the machine record of its encoder."""
    spec = IndexSpec(
        model=ModelSpec(name=args.model, dtype=args.dtype), sparse=SparseSpec(), bm25=True
    )
    index = build_index(args.dataset, scratch / "index", spec, BuildOptions(limit=args.limit))
    manifest = current_manifest(index)
    encoder = Searcher.load(index).encoder
    row = {
        "index": f"{args.limit} documents of {Path(args.dataset).name}, dense + sparse + BM25",
        "files": len(manifest.files),
        "bytes": sum(record["bytes"] for record in manifest.files.values()),
        "load_with_model_s": median_seconds(lambda: Searcher.load(index).close(), 3),
        "load_parts_s": median_seconds(
            lambda: Searcher.load(index, encoder=encoder).close(), args.repeats
        ),
        "check_at_load_s": median_seconds(
            lambda: check_files_at_load(manifest.folder, manifest), args.repeats
        ),
        "check_all_s": median_seconds(lambda: check_index(manifest.folder, manifest), 3),
    }
    return row, encoder_machine_record(encoder)


class _Recorded:
    def __init__(self, files: dict[str, dict[str, Any]]) -> None:
        self.files = files


def synthetic_row(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """A FAISS Flat index of random unit vectors, as large as asked: reading it against
    recording, checking at load and checking every byte of it."""
    folder = scratch / "synthetic"
    folder.mkdir()
    vectors = np.random.default_rng(0).standard_normal((args.vectors, args.dim), np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    index.add_with_ids(vectors, np.arange(args.vectors, dtype=np.int64))
    faiss.write_index(index, str(folder / "index.faiss"))
    del vectors, index
    start = time.perf_counter()
    recorded = _Recorded(file_records(folder))
    recording = time.perf_counter() - start
    return {
        "index": f"{args.vectors:,} x {args.dim} float32 Flat (synthetic)",
        "files": 1,
        "bytes": (folder / "index.faiss").stat().st_size,
        "read_index_s": median_seconds(lambda: faiss.read_index(str(folder / "index.faiss")), 3),
        "record_at_build_s": recording,
        "check_at_load_s": median_seconds(
            lambda: file_problems(folder, recorded, whole=False), args.repeats
        ),
        "check_all_s": median_seconds(lambda: file_problems(folder, recorded, whole=True), 3),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def report_body(real: dict[str, Any], synthetic: dict[str, Any]) -> list[str]:
    share = lambda part, whole: f"{100 * part / whole:.2f}%"  # noqa: E731
    rows = [
        [
            real["index"],
            f"{real['bytes'] / 2**20:,.1f} MiB in {real['files']} files",
            f"{_ms(real['load_with_model_s'])} with the model; {_ms(real['load_parts_s'])} "
            "parts only (encoder given)",
            f"{_ms(real['check_at_load_s'])} "
            f"({share(real['check_at_load_s'], real['load_with_model_s'])}; "
            f"{share(real['check_at_load_s'], real['load_parts_s'])} of the parts-only load)",
            _ms(real["check_all_s"]),
        ],
        [
            synthetic["index"],
            f"{synthetic['bytes'] / 2**30:,.2f} GiB",
            f"{_ms(synthetic['read_index_s'])} (faiss.read_index)",
            f"{_ms(synthetic['check_at_load_s'])} "
            f"({share(synthetic['check_at_load_s'], synthetic['read_index_s'])})",
            f"{_ms(synthetic['check_all_s'])}; recording it at build "
            f"{_ms(synthetic['record_at_build_s'])}",
        ],
    ]
    header = ["index", "size", "load without the checks", "checks at load", "retriever check"]
    return [
        "Medians of repeated runs, one after another.",
        "",
        *markdown_table(header, rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="BEIR folder or beir:NAME")
    parser.add_argument("--limit", type=int, default=100, help="documents indexed (100)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (the embedded default)")
    parser.add_argument("--dtype", default="auto", help="weights dtype (auto)")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="synthetic size (10^6)")
    parser.add_argument("--dim", type=int, default=288, help="synthetic dimension (288)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of the fast steps (7)")
    parser.add_argument("--out", required=True, help="results folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="integrity-cost-") as scratch:
        real, machine = dataset_row(args, Path(scratch))
        synthetic = synthetic_row(args, Path(scratch))
    write_report(
        args.out,
        "integrity_cost",
        {"rows": [real, synthetic]},
        report_body(real, synthetic),
        title="What the file checks cost",
        machine=machine,
    )


if __name__ == "__main__":
    main()
