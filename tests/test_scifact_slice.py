"""Integration: the real default model (SmolLM2-135M) on a slice of BEIR SciFact.

Builds an index of the first 300 SciFact documents with the defaults of `retriever
index`, reloads it, and checks that test queries whose gold document is in the slice
find it in their top 10. About a minute on 2 CPU cores, plus a one-time model conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever import Searcher, build_index
from retriever.datasets import load_qrels, load_queries
from tests.conftest import SHARED_SCIFACT, USER_CACHE

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
    if not (SHARED_SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not at {SHARED_SCIFACT}")
    return build_index(SHARED_SCIFACT, tmp_path_factory.mktemp("scifact") / "slice", limit=SLICE)


@pytest.fixture(scope="module")
def slice_queries(scifact_slice_index: Path) -> dict[str, tuple[str, set[str]]]:
    """Test queries with a gold document in the slice: ``{qid: (text, gold ids)}``."""
    searcher = Searcher.load(scifact_slice_index)
    in_slice = {searcher.docstore.get(row).id for row in range(len(searcher))}
    queries, qrels = load_queries(SHARED_SCIFACT), load_qrels(SHARED_SCIFACT)
    return {
        qid: (queries[qid], set(gold) & in_slice)
        for qid, gold in qrels.items()
        if set(gold) & in_slice
    }


def test_manifest_pins_the_default_setup(scifact_slice_index: Path) -> None:
    manifest = json.loads((scifact_slice_index / "manifest.json").read_text())
    assert manifest["model"]["name"] == "smollm2-135m"
    assert manifest["model"]["hidden_size"] == 576 and manifest["model"]["vocab_size"] == 49152
    assert manifest["encoder"]["prompt"] == "prompteol" and manifest["encoder"]["pooling"] == "mean"
    assert manifest["filter"]["rows"] == [144, 432] and manifest["index"]["dim"] == 288
    assert manifest["index"]["count"] == SLICE


def test_gold_documents_rank_in_the_top_10(
    scifact_slice_index: Path, slice_queries: dict[str, tuple[str, set[str]]]
) -> None:
    searcher = Searcher.load(scifact_slice_index)
    assert len(slice_queries) == 21
    run = searcher.batch_search({qid: text for qid, (text, _) in slice_queries.items()}, k=10)
    found = {qid for qid, (_, gold) in slice_queries.items() if gold & set(run[qid])}
    # When this test was written, 16 of the 21 queries found their gold document in the
    # top 10, and these 9 in the top 3; a broken encoder, filter or index loses them.
    strong = {"248", "249", "261", "399", "552", "839", "921", "957", "1137"}
    assert strong <= found, sorted(strong - found)
    assert len(found) >= 13, sorted(found)
    # One query through the single-query path, as a user would search (gold ranked 1st).
    qid = "552"
    hits = searcher.search(slice_queries[qid][0], k=10)
    assert slice_queries[qid][1] & {hit.id for hit in hits}
