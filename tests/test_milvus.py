"""Milvus (Lite) as the dense backend: the same answers as FAISS, add and delete too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever import EncoderConfig, RetrieverError, Searcher, build_index
from retriever.cli import main
from tests.conftest import synthetic_docs, write_jsonl

pytest.importorskip(
    "pymilvus", reason="Milvus is an optional extra: pip install 'retriever[milvus]'"
)

QUERIES = [doc["text"] for doc in synthetic_docs(30, seed=7)]


def _build(model: Path, corpus: Path, out: Path, **kwargs) -> Path:
    return build_index(
        corpus,
        out,
        model=str(model),
        dtype="float32",
        encoder_config=EncoderConfig(max_length=64),
        **kwargs,
    )


@pytest.fixture(scope="module")
def pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("milvus")
    corpus = write_jsonl(root / "docs.jsonl", synthetic_docs(200, seed=5))
    return {
        "faiss": _build(tiny_model, corpus, root / "faiss"),
        "milvus": _build(tiny_model, corpus, root / "milvus", backend="milvus"),
    }


def test_milvus_flat_answers_like_faiss_flat(pair: dict[str, Path]) -> None:
    faiss_run = Searcher.load(pair["faiss"]).batch_search(QUERIES, k=10)
    milvus = Searcher.load(pair["milvus"])
    milvus_run = milvus.batch_search(QUERIES, k=10)
    overlap = [len(set(faiss_run[q]) & set(milvus_run[q])) / 10 for q in faiss_run]
    assert sum(overlap) / len(overlap) >= 0.99
    for q in faiss_run:
        for doc_id in set(faiss_run[q]) & set(milvus_run[q]):
            assert milvus_run[q][doc_id] == pytest.approx(faiss_run[q][doc_id], abs=1e-5)
    manifest = json.loads((pair["milvus"] / "manifest.json").read_text())
    assert manifest["index"]["backend"] == {
        "backend": "milvus",
        "uri": "milvus.db",
        "collection": "retriever",
        "milvus_index": "FLAT",
    }
    assert (pair["milvus"] / "milvus.db").is_dir() and not (pair["milvus"] / "index.faiss").exists()
    milvus.close()


def test_add_and_delete_on_milvus(tiny_model: Path, tmp_path: Path) -> None:
    index = _build(
        tiny_model,
        write_jsonl(tmp_path / "a.jsonl", synthetic_docs(20)),
        tmp_path / "m",
        backend="milvus",
    )
    extra = write_jsonl(tmp_path / "b.jsonl", synthetic_docs(5, seed=9, prefix="b"))
    assert main(["add", str(index), str(extra)]) == 0
    assert main(["delete", str(index), "s3", "b1"]) == 0
    searcher = Searcher.load(index)
    assert len(searcher) == 23
    run = searcher.batch_search(QUERIES, k=23)
    assert all(not {"s3", "b1"} & set(found) for found in run.values())
    assert (
        searcher.search(
            synthetic_docs(5, seed=9, prefix="b")[2]["title"]
            + " "
            + synthetic_docs(5, seed=9, prefix="b")[2]["text"],
            k=1,
        )[0].id
        == "b2"
    )
    searcher.close()


def test_index_types_milvus_lite_lacks_are_refused(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(RetrieverError, match="HNSW32 has no Milvus Lite equivalent"):
        _build(tiny_model, toy_corpus, tmp_path / "x", backend="milvus", index_type="HNSW32")


def test_changes_to_a_server_collection_are_refused(tmp_path: Path) -> None:
    from retriever.backends import MilvusBackend

    description = {"backend": "milvus", "uri": "http://milvus:19530", "collection": "docs"}
    with pytest.raises(RetrieverError, match="not supported on a Milvus server collection"):
        MilvusBackend.copy_lite(tmp_path, tmp_path / "staging", description, 16)
