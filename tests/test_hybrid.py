"""An index with all three retrievers: dense, key-token sparse and BM25, and their hybrids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from retriever import RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.config import DISPLAY_SPACE
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.parts.sparse import SparseSpec
from retriever.search.fusion import fuse
from tests.conftest import TOY_DOCS, write_jsonl

ALL_METHODS = ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")


@pytest.fixture(scope="module")
def full_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    return build_index(
        write_jsonl(root / "docs.jsonl", TOY_DOCS),
        root / "toy",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            sparse=SparseSpec(doc_tokens=30, query_tokens=5),
            bm25=True,
        ),
    )


def test_the_folder_and_manifest_describe_every_part(full_index: Path) -> None:
    names = sorted(p.name for p in full_index.iterdir())
    assert names == [
        "READERS",
        "bm25",
        "docstore",
        "filter.json",
        "filter.npy",
        "index.faiss",
        "manifest.json",
        "sparse",
    ]
    manifest = json.loads((full_index / "manifest.json").read_text())
    assert manifest["sparse"] == {"count": 6}
    assert manifest["spec"]["sparse"] == {
        "doc_tokens": 30,
        "query_tokens": 5,
        "space": "filtered",
    }
    assert manifest["bm25"]["count"] == 6 and manifest["dense"]["count"] == 6
    sizes = manifest["build"]["bytes"]
    assert sizes["sparse"] > 0 and sizes["bm25"] > 0 and sizes["dense"] > 0
    assert set(manifest["build"]["seconds"]) >= {"encode", "index", "sparse", "bm25"}


def test_every_method_answers_and_hybrids_fuse_their_parts(full_index: Path) -> None:
    searcher = Searcher.load(full_index, dtype="float32")
    assert searcher.methods == ALL_METHODS
    query = "Vitamin D deficiency is associated with bone disease."
    for method in ALL_METHODS:
        hits = searcher.search(query, k=3, method=method)
        assert 1 <= len(hits) <= 3 and len({h.id for h in hits}) == len(hits), method
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # The document's own words: BM25 finds it first (the random model's key tokens need not).
    assert searcher.search(query, k=1, method="bm25")[0].id == "d1"
    # A hybrid is the fusion of its parts' candidate lists, cut to k.
    embeddings = searcher.encode_queries([query])
    dense = searcher.rank([query], 100, method="dense", embeddings=embeddings).rankings[0]
    bm25 = searcher.rank([query], 100, method="bm25").rankings[0]
    dense, bm25 = (
        dict(zip(r.keys.tolist(), r.scores.tolist(), strict=True)) for r in (dense, bm25)
    )
    for fusion in ("rrf", "weighted"):
        expected = fuse(dense, bm25, fusion, 0.3)
        ranked = searcher.rank(
            [query], 4, method="dense+bm25", fusion=fusion, dense_weight=0.3, embeddings=embeddings
        ).rankings[0]
        assert ranked.keys.tolist() == sorted(expected, key=lambda r: (-expected[r], r))[:4]
        np.testing.assert_allclose(ranked.scores, sorted(expected.values())[::-1][:4])
    # More aligned query tokens can only add matches.
    few = searcher.search(query, k=6, method="sparse", sparse_query_tokens=0)
    many = searcher.search(query, k=6, method="sparse", sparse_query_tokens=200)
    assert len(few) <= len(many)
    run = searcher.batch_search({"q": query, "r": "fox"}, k=2, method="dense+sparse")
    assert set(run) == {"q", "r"} and all(len(hits) == 2 for hits in run.values())


def test_explain_and_shared_tokens(full_index: Path) -> None:
    searcher = Searcher.load(full_index, dtype="float32")
    explained = searcher.explain("bone disease", top=6, words_only=False)
    assert explained["text"] == "bone disease"
    assert [len(explained[s]) for s in ("raw", "filtered")] == [6, 6]
    hit = searcher.search("bone disease", k=1)[0]
    as_document = searcher.explain(hit, top=4, words_only=False)
    assert as_document["text"] == hit.embedding_text and len(as_document["filtered"]) == 4
    hits = searcher.search("The quick brown fox", k=2)
    # Shared words are read in the display space, among each side's top displayed words.
    shared = searcher.shared_tokens("The quick brown fox", hits, top=40)
    query_top = {t["id"] for t in searcher.explain("The quick brown fox", top=40)[DISPLAY_SPACE]}
    for hit, tokens in zip(hits, shared, strict=True):
        hit_top = {t["id"] for t in searcher.explain(hit, top=40)[DISPLAY_SPACE]}
        assert {t.id for t in tokens} == query_top & hit_top
    # A document read against itself shares every word it shows.
    own = searcher.search(TOY_DOCS[1]["title"] + " " + TOY_DOCS[1]["text"], k=1)
    shown = searcher.explain(own[0].embedding_text, top=10)[DISPLAY_SPACE]
    assert len(searcher.shared_tokens(own[0].embedding_text, own, top=10)[0]) == len(shown) > 0
    filtered = searcher.shared_tokens("bone disease", hits, top=40, space="filtered")
    assert all(t.token.startswith(" ") for tokens in filtered for t in tokens)


def test_sparse_only_index_and_missing_parts(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sparse-only"
    code = main(
        ["-q", "index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
        + ["--dtype", "float32", "--no-dense", "--sparse", "--sparse-doc-tokens", "20"]
    )
    assert code == 0 and not (out / "index.faiss").exists()
    searcher = Searcher.load(out, dtype="float32")
    assert searcher.methods == ("sparse",)
    assert searcher.search("bone disease", k=2)[0].id  # the default is what the index holds
    with pytest.raises(RetrieverError, match="holds no dense index"):
        searcher.search("bone disease", method="dense+sparse")
    code = main(["search", str(out), "fox", "--method", "bm25"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot answer 'bm25'" in err and "--bm25" in err


def test_cli_search_methods_and_explain(full_index: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["-q", "search", str(full_index), "bone disease", "-k", "2", "--method", "dense+bm25"]
        + ["--fusion", "weighted", "--dense-weight", "0.2", "--json", "--explain"]
    )
    hits = json.loads(capsys.readouterr().out)
    assert code == 0 and len(hits) == 2
    assert set(hits[0]) == {"id", "score", "title", "text", "key", "metadata", "shared_tokens"}
    code = main(["-q", "search", str(full_index), "bone disease", "-k", "1", "--explain"])
    assert code == 0 and "shared tokens:" in capsys.readouterr().out
    code = main(
        ["search", str(full_index), "bone", "--method", "dense+bm25", "--fusion", "weighted"]
        + ["--dense-weight", "2"]
    )
    assert code == 2 and "--dense-weight must lie in [0, 1]" in capsys.readouterr().err


def test_one_query_runs_numpys_blas_on_one_thread_and_a_batch_keeps_its_threads(
    full_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searcher = Searcher.load(full_index, dtype="float32")
    seen = []
    transform = searcher.filter.transform

    def recording(*args, **kwargs):
        seen.append(
            {
                lib["filepath"]: lib["num_threads"]
                for lib in threadpool_info()
                if lib.get("threading_layer") == "pthreads"
            }
        )
        return transform(*args, **kwargs)

    monkeypatch.setattr(searcher.filter, "transform", recording)
    before = {
        lib["filepath"]: lib["num_threads"]
        for lib in threadpool_info()
        if lib.get("threading_layer") == "pthreads"
    }
    assert before  # numpy's wheel threads its OpenBLAS with pthreads
    searcher.search("alpha", 3, method="dense+sparse")
    searcher.rank(["alpha", "beta"], 3, method="dense+sparse")
    assert seen == [dict.fromkeys(before, 1), before]
    after = {
        lib["filepath"]: lib["num_threads"]
        for lib in threadpool_info()
        if lib.get("threading_layer") == "pthreads"
    }
    assert after == before
