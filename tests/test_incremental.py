"""add / upsert / delete: every method answers as a fresh build of the same documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig, FilterSpec, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec, SearchParams, SparseSpec
from retriever.index.build import Indexer, delete_documents
from retriever.index.options import BuildOptions
from retriever.parts.docstore import content_digest
from tests.conftest import synthetic_docs, write_jsonl

FIRST = synthetic_docs(30, seed=1, prefix="a")
SECOND = synthetic_docs(10, seed=2, prefix="b")
QUERIES = {f"q{i}": doc["text"] for i, doc in enumerate(synthetic_docs(8, seed=3))}
METHODS = [
    ("dense", "rrf"),
    ("sparse", "rrf"),
    ("bm25", "rrf"),
    ("dense+sparse", "rrf"),
    ("dense+bm25", "weighted"),
]


def _build(model: Path, docs: list[dict], folder: Path) -> Path:
    return build_index(
        write_jsonl(folder.with_suffix(".jsonl"), docs),
        folder,
        IndexSpec(
            model=ModelSpec(name=str(model), dtype="float32"),
            encoder=EncoderConfig(max_length=64),
            filter=FilterSpec(tau=2),
            sparse=SparseSpec(doc_tokens=40, query_tokens=10),
            bm25=True,
        ),
        BuildOptions(chunk_size=16),
    )


def _runs(index: Path) -> dict[str, dict[str, dict[str, float]]]:
    searcher = Searcher.load(index)
    k = len(searcher)
    runs = {
        method: searcher.batch_search(QUERIES, k=k, method=method, fusion=fusion).to_beir()
        for method, fusion in METHODS
    }
    searcher.close()
    return runs


def _assert_same_runs(got: dict, expected: dict) -> None:
    for method in expected:
        for qid in expected[method]:
            assert set(got[method][qid]) == set(expected[method][qid]), (method, qid)
            for doc_id, score in expected[method][qid].items():
                assert got[method][qid][doc_id] == pytest.approx(score, rel=1e-4, abs=1e-5)


def _assert_manifest_true(index: Path) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    searcher = Searcher.load(index)
    documents = list(searcher.docstore)
    assert manifest["documents"]["count"] == len(documents)
    for part in ("dense", "sparse", "bm25"):
        assert manifest[part]["count"] == len(documents)
    assert manifest["documents"]["content_sha256"] == f"{content_digest(documents):064x}"
    searcher.close()


@pytest.fixture(scope="module")
def grown(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("incremental")
    index = _build(tiny_model, FIRST, root / "grown")
    added = write_jsonl(root / "second.jsonl", SECOND)
    assert main(["add", str(index), str(added), "--chunk-size", "4"]) == 0
    return {"index": index, "fresh": _build(tiny_model, FIRST + SECOND, root / "fresh")}


def test_add_answers_like_a_fresh_build(grown: dict[str, Path]) -> None:
    _assert_same_runs(_runs(grown["index"]), _runs(grown["fresh"]))
    _assert_manifest_true(grown["index"])
    history = json.loads((grown["index"] / "manifest.json").read_text())["documents"]["history"]
    assert [entry["op"] for entry in history] == ["build", "add"]


def test_delete_never_returns_a_deleted_document(
    grown: dict[str, Path], tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = tmp_path / "shrunk"
    index.symlink_to(grown["index"].resolve())  # a copy of the grown index's current state
    gone = ["a3", "a17", "b0", "b9"]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("b0\nb9\n")
    assert main(["delete", str(index), "a3", "a17", "--ids-file", str(ids_file)]) == 0
    assert "4 deleted" in capsys.readouterr().out
    runs = _runs(index)
    for method, run in runs.items():
        for ranking in run.values():
            assert not set(gone) & set(ranking), method
    survivors = [d for d in FIRST + SECOND if d["_id"] not in gone]
    _assert_same_runs(runs, _runs(_build(tiny_model, survivors, tmp_path / "fresh")))
    _assert_manifest_true(index)


def test_upsert_replaces_and_new_ids_are_refused_without_it(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = _build(tiny_model, FIRST, tmp_path / "index")
    changed = [{"_id": "a5", "title": "Foxes", "text": "quick brown fox jumps"}, *SECOND[:2]]
    corpus = write_jsonl(tmp_path / "changed.jsonl", changed)
    assert main(["add", str(index), str(corpus)]) == 2
    assert "1 of the documents are already in" in capsys.readouterr().err
    assert main(["add", str(index), str(corpus), "--upsert"]) == 0
    assert "2 added, 1 replaced" in capsys.readouterr().out
    searcher = Searcher.load(index)
    assert len(searcher) == 32
    hit = searcher.search("Foxes quick brown fox jumps", k=1)[0]
    assert hit.id == "a5" and hit.text == "quick brown fox jumps"
    assert hit.key >= 30  # a replaced document takes a new key; old keys are never reused
    searcher.close()
    _assert_manifest_true(index)


def test_delete_mistakes_change_nothing(tiny_model: Path, tmp_path: Path) -> None:
    index = _build(tiny_model, FIRST[:6], tmp_path / "index")
    before = index.resolve()
    with pytest.raises(RetrieverError, match="holds no document with id 'zzz'"):
        delete_documents(index, ["a1", "zzz"])
    with pytest.raises(RetrieverError, match="no document ids"):
        delete_documents(index, [])
    assert index.resolve() == before and len(Searcher.load(index)) == 6


def test_indexer_methods_from_python(tiny_model: Path, tmp_path: Path) -> None:
    index = _build(tiny_model, FIRST[:6], tmp_path / "index")
    searcher = Searcher.load(index)
    indexer = Indexer(searcher.encoder)
    assert indexer.add(index, write_jsonl(tmp_path / "b.jsonl", SECOND[:3])) == {
        "added": 3,
        "replaced": 0,
    }
    assert indexer.delete(index, ["b1"]) == 1
    assert sorted(d.id for d in Searcher.load(index).docstore) == sorted(
        ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b2"]
    )


def test_nprobe_and_ef_search_are_stored_and_overridable(tiny_model: Path, tmp_path: Path) -> None:
    docs = synthetic_docs(300, seed=4)
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    model = ModelSpec(name=str(tiny_model), dtype="float32")
    encoding = EncoderConfig(max_length=64)
    assert (
        main(
            [
                "index",
                str(corpus),
                "--out",
                str(tmp_path / "ivf"),
                "--model",
                str(tiny_model),
                "--dtype",
                "float32",
                "--max-length",
                "64",
                "--tau",
                "1",
                "--index-type",
                "IVF16,Flat",
                "--nprobe",
                "3",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "ivf" / "manifest.json").read_text())
    assert manifest["spec"]["dense"]["search"] == {"nprobe": 3, "ef_search": None, "rescore": None}
    flat = build_index(
        corpus, tmp_path / "flat", IndexSpec(model, encoding, filter=FilterSpec(tau=1))
    )
    exact = Searcher.load(flat)
    truth = exact.batch_search([d["text"] for d in docs[:40]], k=10).to_beir()

    def recall(nprobe: int | None) -> float:
        searcher = Searcher.load(tmp_path / "ivf", search=SearchParams(nprobe=nprobe))
        run = searcher.batch_search([d["text"] for d in docs[:40]], k=10).to_beir()
        return np.mean([len(set(run[q]) & set(truth[q])) / 10 for q in truth])

    import faiss

    assert faiss.extract_index_ivf(Searcher.load(tmp_path / "ivf").index.index).nprobe == 3
    assert recall(1) < recall(16) == 1.0  # all 16 lists: exact
    with pytest.raises(RetrieverError, match="efSearch applies to HNSW indexes"):
        Searcher.load(tmp_path / "ivf", search=SearchParams(ef_search=8))
    with pytest.raises(RetrieverError, match="--ef-search does not apply to --index-type Flat"):
        dense = DenseSpec(search=SearchParams(ef_search=8))
        build_index(corpus, tmp_path / "x", IndexSpec(model, encoding, dense=dense))


def test_ivf_delete_and_add_match_a_fresh_build(tiny_model: Path, tmp_path: Path) -> None:
    """IVF keeps document keys in its own lists: removing some and adding others must
    leave exactly the survivors (an ID map over IVF would renumber them wrongly)."""
    docs = synthetic_docs(400, seed=11)
    spec = IndexSpec(
        model=ModelSpec(name=str(tiny_model), dtype="float32"),
        encoder=EncoderConfig(max_length=64),
        filter=FilterSpec(tau=1),
        dense=DenseSpec(index_type="IVF8,Flat"),
    )
    index = build_index(write_jsonl(tmp_path / "a.jsonl", docs[:300]), tmp_path / "ivf", spec)
    gone = [d["_id"] for d in docs[:300:3]]
    delete_documents(index, gone)
    Indexer(Searcher.load(index).encoder).add(index, write_jsonl(tmp_path / "b.jsonl", docs[300:]))
    survivors = [d for d in docs if d["_id"] not in gone]
    fresh = build_index(write_jsonl(tmp_path / "c.jsonl", survivors), tmp_path / "fresh", spec)
    queries = [d["title"] + " " + d["text"] for d in docs[::7]]
    got = Searcher.load(index, search=SearchParams(nprobe=8)).batch_search(queries, k=10).to_beir()
    expected = (
        Searcher.load(fresh, search=SearchParams(nprobe=8)).batch_search(queries, k=10).to_beir()
    )
    for qid in expected:
        assert not set(gone) & set(got[qid])
        assert list(got[qid]) == list(expected[qid])
