"""What the benchmarks read: the SciFact folder, its queries, and the small stand-ins a
quick run (``run_all.py --quick``) uses instead of the real model and collection."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# $SCIFACT, as benchmarks/run_scifact.sh has always read it.
SCIFACT = Path(
    os.path.abspath(os.environ.get("SCIFACT", ROOT.parent / "shared" / "datasets" / "scifact"))
)


def dataset_path(text: str) -> Path:
    """An argparse type: a dataset folder or file that exists, as an absolute path (the
    benchmarks hand it to processes that run elsewhere); ``beir:NAME`` is fetched into the
    cache once and named by its folder there."""
    from retriever.core.errors import RetrieverError
    from retriever.data.catalog import is_named, local_dataset

    if is_named(text):
        try:
            return Path(local_dataset(text))
        except RetrieverError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    path = Path(os.path.abspath(Path(text).expanduser()))  # links kept: see shown_path
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such dataset: {path} (set $SCIFACT?)")
    return path


def save_tiny_model(folder: Path) -> Path:
    """The tests' tiny random Llama (hidden size 32, a 400-token BPE trained on the fly),
    saved as a local model folder: it encodes thousands of documents a second."""
    sys.path.insert(0, str(ROOT))  # tests/ is not installed
    from tests.conftest import save_tiny_model as save

    return save(folder, seed=0)


def tiny_model_words() -> list[str]:
    """The words the tiny model's tokenizer was trained on: synthetic documents of them
    tokenize like real text."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import TRAINING_TEXTS

    return sorted({w.strip(".,:") for t in TRAINING_TEXTS for w in t.split()} - {""})


def write_synthetic_corpus(path: Path, n: int) -> Path:
    """``n`` documents of 8-30 random words, as a JSONL corpus (seeded by ``n``)."""
    words = tiny_model_words()
    rng = random.Random(n)
    with path.open("w") as handle:
        for i in range(n):
            picked = rng.choices(words, k=rng.randint(8, 30))
            record = {"_id": f"d{i}", "title": " ".join(picked[:3]), "text": " ".join(picked[3:])}
            handle.write(json.dumps(record) + "\n")
    return path


def test_query_ids(dataset: Path) -> list[str]:
    """Ids of the queries the test split judges, in qrels order."""
    with (dataset / "qrels" / "test.tsv").open() as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return list(dict.fromkeys(row["query-id"] for row in rows))


def query_texts(dataset: Path) -> dict[str, str]:
    """Every query's text by id, in file order."""
    with (dataset / "queries.jsonl").open() as handle:
        return {record["_id"]: record["text"] for record in map(json.loads, handle)}


def test_queries(dataset: Path, limit: int) -> list[str]:
    """The first ``limit`` test queries' texts."""
    texts = query_texts(dataset)
    return [texts[i] for i in test_query_ids(dataset)[:limit]]


def write_slice(dataset: Path, folder: Path, *, queries: int = 20, filler: int = 80) -> Path:
    """A small BEIR folder cut from ``dataset``: its first ``queries`` test queries, the
    documents they judge, and the first ``filler`` other documents."""
    if not (dataset / "qrels" / "test.tsv").exists():
        raise SystemExit(f"{dataset} is not a BEIR folder with qrels/test.tsv (set $SCIFACT)")
    kept = set(test_query_ids(dataset)[:queries])
    with (dataset / "qrels" / "test.tsv").open() as handle:
        qrels = [row for row in csv.DictReader(handle, delimiter="\t") if row["query-id"] in kept]
    judged = {row["corpus-id"] for row in qrels}
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "qrels" / "test.tsv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["query-id", "corpus-id", "score"], delimiter="\t")
        writer.writeheader()
        writer.writerows({key: row[key] for key in writer.fieldnames} for row in qrels)
    with (dataset / "queries.jsonl").open() as source, (folder / "queries.jsonl").open("w") as out:
        out.writelines(line for line in source if json.loads(line)["_id"] in kept)
    with (dataset / "corpus.jsonl").open() as source, (folder / "corpus.jsonl").open("w") as out:
        others = 0
        for line in source:
            is_judged = json.loads(line)["_id"] in judged
            if is_judged or others < filler:
                out.write(line)
                others += not is_judged
    return folder
