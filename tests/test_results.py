"""The one result type: a Ranking per query, Results for many, hits read on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever import RetrieverError, Searcher, build_index
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.search.results import Ranking, Results
from tests.conftest import TOY_DOCS, write_jsonl


@pytest.fixture(scope="module")
def toy_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    corpus = write_jsonl(root / "docs.jsonl", TOY_DOCS)
    return build_index(
        corpus, root / "index", IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"))
    )


def test_a_ranking_is_its_hits_and_results_view_as_beir(toy_index: Path) -> None:
    searcher = Searcher.load(toy_index)
    try:
        ranking = searcher.search("Foxes The quick brown fox", k=3)
        assert isinstance(ranking, Ranking) and len(ranking) == 3
        assert [hit.id for hit in ranking] == list(ranking.ids)
        assert [hit.key for hit in ranking] == ranking.keys.tolist()
        assert ranking[0].title == "Foxes" and ranking[0].to_dict()["key"] == ranking.keys[0]
        results = searcher.batch_search({"a": "Foxes The quick brown fox", "b": "bone"}, k=3)
        assert isinstance(results, Results) and list(results) == ["a", "b"]
        assert results["a"].ids == ranking.ids
        # Equal up to float rounding: a batch pads its queries, which moves the last bits.
        assert results.to_beir()["a"] == pytest.approx(ranking.to_dict(), rel=1e-6)
        assert list(results.to_beir()["a"]) == list(ranking.ids)  # best first
    finally:
        searcher.close()


def test_hits_are_read_before_the_searcher_closes(toy_index: Path) -> None:
    searcher = Searcher.load(toy_index)
    ranking = searcher.search("bone disease", k=2)
    searcher.close()
    assert len(ranking.ids) == 2  # ids and scores need no docstore
    with pytest.raises(RetrieverError, match="docstore is closed"):
        ranking.hits()


def test_query_ids_must_fit_the_queries(toy_index: Path) -> None:
    searcher = Searcher.load(toy_index)
    try:
        with pytest.raises(RetrieverError, match="query id 'q' is given twice"):
            searcher.rank(["a", "b"], 2, query_ids=["q", "q"])
        with pytest.raises(RetrieverError, match="1 query ids for 2 queries"):
            searcher.rank(["a", "b"], 2, query_ids=["q"])
    finally:
        searcher.close()
