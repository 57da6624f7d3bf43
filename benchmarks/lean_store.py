"""The lean embedding store on SciFact: bytes per document, cosine and nDCG@10.

The stores compared, in one run:
- the old default: float32, both poolings (a version 1 store, or the benchmarks' own);
- float32, the one pooling an index reads (mean);
- float16, mean: the new default.

The float16 and one-pooling stores are written by the store's own writer
(``EmbeddingStore.write_shard``) from the float32 store's vectors, chunk by chunk: the
encoder yields float32 and the store casts, so this is what an encode writes, without
running the LLM three times. Each store then builds the default index (EmbedFilter,
Flat, float32 codes) through ``build_index --from STORE``, searched by ``Searcher`` on
the judged test queries (the same query embeddings for every index).

    python benchmarks/lean_store.py --out benchmarks/results/lean-store
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report

from retriever import EncoderConfig, Searcher, build_index
from retriever.core.sizes import folder_bytes
from retriever.data.datasets import load_qrels, load_queries, scan_corpus
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.run import BENCH_STORE
from retriever.evaluation.metrics import encode_timed, evaluate_index, judged_queries
from retriever.index.options import BuildOptions
from retriever.store.embeddings import EmbeddingStore
from retriever.store.encoding import encode_corpus

STORES = (("float32", ("mean", "last")), ("float32", ("mean",)), ("float16", ("mean",)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None, help="default: SciFact")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.dataset = dataset_path(args.dataset or SCIFACT)
    return args


def derived_store(source: EmbeddingStore, folder: Path, precision: str, poolings: tuple) -> Any:
    """A store of ``source``'s encoding keeping ``poolings`` at ``precision``, written shard
    by shard through the store's writer."""
    key = {**source.key, "version": 2, "poolings": list(poolings), "precision": precision}
    store = EmbeddingStore.open_or_create(folder, key)
    for shard in source.shards():
        vectors = {p: np.asarray(shard.embeddings(p), dtype=np.float32) for p in poolings}
        store.write_shard(shard.chunk, list(shard.documents()), vectors, slice_label="0/1")
    return store


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def measure(
    args: argparse.Namespace, scratch: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The stores' rows, what they were measured on, and the encoder's machine record."""
    config = EncoderConfig(prompt="prompteol", pooling="mean", max_length=256)
    encoder = Encoder.load(args.model, config, dtype=args.dtype, batch_size=16)
    scan = scan_corpus(args.dataset, args.limit)
    source = encode_corpus(encoder, scan, **BENCH_STORE)
    qrels = load_qrels(args.dataset, "test")
    queries = judged_queries(load_queries(args.dataset), qrels)
    encoded = encode_timed(encoder.encode_queries, queries, latency_queries=5)
    reference = source.read("mean")
    rows = []
    for precision, poolings in STORES:
        name = f"{precision}-{'+'.join(poolings)}"
        if (precision, list(poolings)) == (source.precision, list(source.poolings)):
            store = source
        else:
            store = derived_store(source, scratch / name, precision, poolings)
        build_index(
            None,
            scratch / f"{name}.index",
            None,
            BuildOptions(from_store=store.folder),
            encoder=encoder,
        )
        searcher = Searcher.load(scratch / f"{name}.index", encoder=encoder)
        try:
            result, _ = evaluate_index(searcher, queries, qrels, methods=["dense"], encoded=encoded)
        finally:
            searcher.close()
        similarity = cosines(store.read("mean"), reference)
        size = folder_bytes(store.folder)
        rows.append(
            {
                "store": name,
                "precision": precision,
                "poolings": list(poolings),
                "bytes": size,
                "bytes_per_doc": size / store.count,
                "cosine_to_float32_min": float(similarity.min()),
                "cosine_to_float32_mean": float(similarity.mean()),
                "ndcg_at_10": result[0]["ndcg_at_10"],
            }
        )
    meta = {"documents": scan.count, "queries": len(queries), "model": args.model}
    meta["dtype"] = str(encoder.dtype).removeprefix("torch.")
    return rows, meta, encoder_machine_record(encoder)


def report_body(rows: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    old, new = rows[0], rows[-1]
    lines = [
        f"Model {record['model']} ({record['dtype']}), "
        f"PromptEOL, mean pooling, EmbedFilter defaults, Flat; {record['documents']} "
        f"documents, {record['queries']} judged test queries.",
        "",
        f"- Store bytes per document: {old['bytes_per_doc']:,.0f} (float32, both poolings) "
        f"-> {new['bytes_per_doc']:,.0f} (float16, mean): "
        f"{old['bytes_per_doc'] / new['bytes_per_doc']:.2f}x smaller.",
        f"- nDCG@10: {old['ndcg_at_10']:.4f} -> {new['ndcg_at_10']:.4f} "
        f"({'identical' if old['ndcg_at_10'] == new['ndcg_at_10'] else 'changed'}).",
        f"- float16 cosine to float32: min {new['cosine_to_float32_min']:.7f}, mean "
        f"{new['cosine_to_float32_mean']:.7f}.",
        "",
    ]
    header = ["store", "bytes", "B/doc", "cosine min", "cosine mean", "nDCG@10"]
    cells = [
        [
            r["store"],
            f"{r['bytes']:,}",
            f"{r['bytes_per_doc']:,.0f}",
            f"{r['cosine_to_float32_min']:.7f}",
            f"{r['cosine_to_float32_mean']:.7f}",
            f"{r['ndcg_at_10']:.4f}",
        ]
        for r in rows
    ]
    return lines + markdown_table(header, cells)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="[lean-store] %(message)s")
    with tempfile.TemporaryDirectory(prefix="lean-store-") as scratch:
        rows, meta, machine = measure(args, Path(scratch))
    record = {**meta, "rows": rows}
    write_report(
        args.out,
        "lean_store",
        record,
        report_body(rows, record),
        title="The lean embedding store on SciFact",
        machine=machine,
    )


if __name__ == "__main__":
    main()
