"""Integration: the real default model (SmolLM2-135M) on a slice of BEIR SciFact.

Builds an index of the first 300 SciFact documents with the defaults of `retriever
index` plus the key-token sparse index and BM25, reloads it, and checks that test queries
whose gold document is in the slice find it in their top 10 with every method, and that
the token lens reads key words through the filter. About a minute on 2 CPU cores, plus a
one-time model conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever import Searcher, build_index
from retriever.core.config import DISPLAY_SPACE
from retriever.core.spec import DenseSpec, IndexSpec
from retriever.data.datasets import load_qrels, load_queries
from retriever.encode.lens import alignment_metrics, english_stopwords, is_display_word
from retriever.index.options import BuildOptions
from retriever.parts.sparse import SparseSpec
from tests.conftest import SCIFACT, USER_CACHE, require_scifact

pytestmark = pytest.mark.slow

SLICE = 300


@pytest.fixture(scope="module", autouse=True)
def _user_cache():
    """The real model is converted once into the user's cache, not once per test run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVER_CACHE", str(USER_CACHE))
        yield


@pytest.fixture(scope="module")
def scifact_slice_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_scifact()
    return build_index(
        SCIFACT,
        tmp_path_factory.mktemp("scifact") / "slice",
        IndexSpec(sparse=SparseSpec(), bm25=True),
        BuildOptions(limit=SLICE),
    )


@pytest.fixture(scope="module")
def slice_queries(scifact_slice_index: Path) -> dict[str, tuple[str, set[str]]]:
    """Test queries with a gold document in the slice: ``{qid: (text, gold ids)}``."""
    searcher = Searcher.load(scifact_slice_index)
    in_slice = {searcher.docstore.get(row).id for row in range(len(searcher))}
    queries, qrels = load_queries(SCIFACT), load_qrels(SCIFACT)
    return {
        qid: (queries[qid], set(gold) & in_slice)
        for qid, gold in qrels.items()
        if set(gold) & in_slice
    }


def test_manifest_pins_the_default_setup(scifact_slice_index: Path) -> None:
    manifest = json.loads((scifact_slice_index / "manifest.json").read_text())
    assert manifest["model"]["name"] == "smollm2-135m"
    assert manifest["model"]["hidden_size"] == 576 and manifest["model"]["vocab_size"] == 49152
    assert manifest["spec"] == IndexSpec(sparse=SparseSpec(), bm25=True).to_dict()
    assert manifest["filter"]["rows"] == [144, 432] and manifest["dense"]["dim"] == 288
    assert manifest["dense"]["count"] == SLICE


def test_gold_documents_rank_in_the_top_10(
    scifact_slice_index: Path, slice_queries: dict[str, tuple[str, set[str]]]
) -> None:
    searcher = Searcher.load(scifact_slice_index)
    assert len(slice_queries) == 21
    run = searcher.batch_search({qid: text for qid, (text, _) in slice_queries.items()}, k=10)
    found = {qid for qid, (_, gold) in slice_queries.items() if gold & set(run[qid].ids)}
    # When this test was written, 16 of the 21 queries found their gold document in the
    # top 10, and these 9 in the top 3; a broken encoder, filter or index loses them.
    strong = {"248", "249", "261", "399", "552", "839", "921", "957", "1137"}
    assert strong <= found, sorted(strong - found)
    assert len(found) >= 13, sorted(found)
    # One query through the single-query path, as a user would search (gold ranked 1st).
    qid = "552"
    hits = searcher.search(slice_queries[qid][0], k=10)
    assert slice_queries[qid][1] & {hit.id for hit in hits}


def test_every_method_finds_gold_documents(
    scifact_slice_index: Path, slice_queries: dict[str, tuple[str, set[str]]]
) -> None:
    searcher = Searcher.load(scifact_slice_index)
    assert searcher.methods == ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")
    queries = {qid: text for qid, (text, _) in slice_queries.items()}
    found = {}
    for method in searcher.methods:
        for fusion in ("rrf", "weighted") if "+" in method else ("rrf",):
            run = searcher.batch_search(queries, k=10, method=method, fusion=fusion)
            found[method, fusion] = sum(
                bool(gold & set(run[qid].ids)) for qid, (_, gold) in slice_queries.items()
            )
    # Found (of 21) with the default filter (edge, mean direction removed), measured when
    # it became the default: BM25 and dense+BM25 lead, as on the full collection; the key
    # tokens read through this filter find as much as its dense index (with the paper's
    # filter they found 10).
    measured = {
        ("dense", "rrf"): 15,
        ("sparse", "rrf"): 16,
        ("bm25", "rrf"): 20,
        ("dense+sparse", "rrf"): 16,
        ("dense+sparse", "weighted"): 16,
        ("dense+bm25", "rrf"): 21,
        ("dense+bm25", "weighted"): 21,
    }
    assert set(found) == set(measured)
    assert all(abs(found[key] - count) <= 2 for key, count in measured.items()), repr(found)


def test_the_lens_shows_words_and_measures_what_it_shows(scifact_slice_index: Path) -> None:
    searcher = Searcher.load(scifact_slice_index)
    query = "Vitamin D deficiency is associated with bone disease."
    plain = searcher.explain(query, top=10, words_only=False)
    raw = [t["token"].strip().lower() for t in plain["raw"]]
    assert {"the", ",", "and", "a", "of"} & set(raw)  # a raw LLM embedding reads as junk
    shown = searcher.explain(query, top=10)
    stopwords = english_stopwords()
    for space in ("raw", "filtered"):
        assert len(shown[space]) == 10
        assert all(is_display_word(t["token"], stopwords) for t in shown[space]), shown[space]
    texts = [searcher.docstore.get(row).embedding_text for row in range(100)]
    embeddings = searcher.encoder.encode_documents(texts, show_progress=False)
    token_ids = searcher.encoder.text_token_ids(texts)
    metrics = {
        space: alignment_metrics(searcher.lens, embeddings, token_ids, space)
        for space in ("raw", "filtered")
    }
    # Measured on these 100 documents: junk@10 0.873 raw -> 0.114 filtered; displayed
    # Hit@10 1.00 raw, 0.64 filtered.
    assert metrics["raw"]["hit_at_10"] == 1.0  # every document contains some stopword
    assert metrics["raw"]["junk_at_10"] > 0.8 and metrics["filtered"]["junk_at_10"] < 0.3
    assert metrics["filtered"]["displayed_hit_at_10"] == pytest.approx(0.64, abs=0.1)
    # The display space is the one whose shown words match the text more often.
    assert metrics[DISPLAY_SPACE]["displayed_hit_at_10"] == max(
        m["displayed_hit_at_10"] for m in metrics.values()
    )


def test_milvus_flat_and_faiss_flat_agree_on_scifact_vectors(
    scifact_slice_index: Path, tmp_path: Path
) -> None:
    """The same filtered vectors (from the slice's embedding store, not encoded again) in
    Milvus Lite FLAT and FAISS Flat: the same top 10 for every test query."""
    pytest.importorskip("pymilvus")
    from retriever.evaluation.metrics import evaluate_run, judged_queries

    milvus_index = build_index(
        SCIFACT,
        tmp_path / "milvus",
        IndexSpec(dense=DenseSpec(backend="milvus")),
        BuildOptions(limit=SLICE),
    )
    qrels = load_qrels(SCIFACT)
    queries = judged_queries(load_queries(SCIFACT), qrels)
    runs = {}
    for name, index in (("faiss", scifact_slice_index), ("milvus", milvus_index)):
        searcher = Searcher.load(index)
        runs[name] = searcher.batch_search(queries, k=10)
        searcher.close()
    overlap = [len(set(runs["faiss"][q].ids) & set(runs["milvus"][q].ids)) / 10 for q in queries]
    assert len(overlap) == 300 and sum(overlap) / len(overlap) >= 0.99
    ndcg = {name: evaluate_run(qrels, run)["ndcg_at_10"] for name, run in runs.items()}
    assert abs(ndcg["faiss"] - ndcg["milvus"]) <= 0.001, ndcg
