from __future__ import annotations

import logging
from pathlib import Path

import pytest

from retriever.core.errors import RetrieverError
from retriever.data.datasets import load_corpus, load_qrels, load_queries
from tests.conftest import TOY_DOCS, require_scifact, write_jsonl


def test_reads_documents_in_file_order_with_metadata(toy_corpus: Path) -> None:
    corpus = load_corpus(toy_corpus)
    assert [d.id for d in corpus.documents] == [d["_id"] for d in TOY_DOCS]
    assert corpus.documents[5].metadata == {"lang": "mixed"}
    assert corpus.documents[0].embedding_text == (
        "Vitamin D Vitamin D deficiency is associated with bone disease."
    )
    assert corpus.documents[4].embedding_text == "Unembedding matrices project hidden states."


def test_limit_takes_the_first_documents(toy_corpus: Path) -> None:
    assert [d.id for d in load_corpus(toy_corpus, limit=2).documents] == ["d1", "d2"]
    assert load_corpus(toy_corpus, limit=2).sha256 != load_corpus(toy_corpus).sha256


def test_reads_a_beir_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", TOY_DOCS)
    assert len(load_corpus(tmp_path)) == len(TOY_DOCS)


def test_documents_without_title_or_text_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"_id": "a", "text": "kept"}, {"_id": "b", "title": " ", "text": ""}, {"_id": "c"}],
    )
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(path)
    assert [d.id for d in corpus.documents] == ["a"]
    assert corpus.skipped_empty == ["b", "c"]
    assert "skipped 2 document(s)" in caplog.text


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', r"docs.jsonl:2: not valid JSON"),
        (b'{"_id": "a", "text": "x"}\n[1, 2]\n', r"docs.jsonl:2: expected a JSON object"),
        (b'{"text": "no id"}\n', r'docs.jsonl:1: missing or non-string "_id"'),
        (b'{"_id": "  ", "text": "x"}\n', r'docs.jsonl:1: empty "_id"'),
        (b'{"_id": "a", "text": 5}\n', r'docs.jsonl:1: field "text" must be a string'),
        (
            b'{"_id": "a", "text": "x"}\n\n{"_id": "a", "text": "y"}\n',
            r"docs.jsonl:3: duplicate document id 'a' \(first seen on line 1\)",
        ),
        (b'{"_id": "a", "text": "caf\xe9"}\n', r"docs.jsonl:1: not valid UTF-8 \(byte 0xe9"),
        (b"\n\n", r"holds no documents"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path: Path, lines: bytes, message: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(lines)
    with pytest.raises(RetrieverError, match=message):
        load_corpus(path)


def test_missing_dataset_and_folder_without_corpus(tmp_path: Path) -> None:
    with pytest.raises(RetrieverError, match="does not exist"):
        load_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(RetrieverError, match="folder without corpus.jsonl"):
        load_corpus(tmp_path)
    with pytest.raises(RetrieverError, match="--limit must be a positive"):
        load_corpus(tmp_path, limit=0)


def test_scifact_queries_and_qrels() -> None:
    scifact = require_scifact()
    queries = load_queries(scifact)
    qrels = load_qrels(scifact, "test")
    assert len(queries) == 300
    assert queries["1"] == "0-dimensional biomaterials show inductive properties."
    assert qrels["1"] == {"31715818": 1}
    assert sum(len(v) for v in qrels.values()) == 339
