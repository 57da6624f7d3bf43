"""What users built with the previous release keeps working: its index folders (manifest
version 2, flat module layout) load, rank exactly as that release ranked them, grow and
shrink; its sentence-transformers export still loads through the module path it names.

The folders are tests/fixtures/release-0.1, written by commit a3f3382 (see the README
beside them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retriever import DenseSpec, Index, IndexSpec, Searcher
from retriever.cli import main
from tests.conftest import ROOT, write_jsonl

RELEASE = ROOT / "tests" / "fixtures" / "release-0.1"
RECORDED = json.loads((RELEASE / "rankings.json").read_text())


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A writable copy of the release's folders (the generation links kept as links)."""
    return Path(shutil.copytree(RELEASE, tmp_path / "release", symlinks=True))


@pytest.mark.parametrize("name", ["flat", "hnsw-binary"])
def test_a_release_index_ranks_as_that_release_ranked_it(release: Path, name: str) -> None:
    searcher = Searcher.load(release / name, model=str(release / "model"))
    queries = RECORDED["queries"]
    methods = [key.split("/", 1)[1] for key in RECORDED["rankings"] if key.startswith(name)]
    assert list(searcher.methods) == methods
    for method in methods:
        run = searcher.batch_search(queries, k=5, method=method)
        for query_id, expected in RECORDED["rankings"][f"{name}/{method}"].items():
            got = [[hit.id, float(hit.score)] for hit in run[query_id]]
            assert [doc for doc, _ in got] == [doc for doc, _ in expected], (method, query_id)
            np.testing.assert_allclose(
                [score for _, score in got], [score for _, score in expected], atol=1e-4
            )
    searcher.close()


def test_a_release_manifest_reads_as_the_spec_it_was_built_by(release: Path) -> None:
    """Version 2 kept the settings beside what the build found; its reader rebuilds the
    spec from them, the dense part under its own name."""
    flat, hnsw = Index(release / "flat").manifest(), Index(release / "hnsw-binary").manifest()
    assert flat.read_version == hnsw.read_version == 2
    assert flat.spec.parts == ("dense", "sparse", "bm25") and hnsw.spec.parts == ("dense",)
    assert flat.spec.dense == DenseSpec(index_type="Flat", storage="float32")
    assert hnsw.spec.dense == DenseSpec(
        index_type="HNSW8", storage="binary", binary_centre="documents"
    )
    assert flat.spec.sparse is not None and flat.spec.filter.tau == 2
    assert flat.spec.model.dtype == flat.model["dtype"]
    assert flat.part_bytes["dense"] > 0 and "index" not in flat.part_bytes


def test_a_release_index_grows_and_shrinks(release: Path, capsys) -> None:
    index, model = release / "flat", str(release / "model")
    spec = Index(index).spec
    extra = write_jsonl(
        release / "extra.jsonl",
        [{"_id": "n1", "title": "Tides", "text": "The Moon pulls the oceans into two bulges."}],
    )
    assert main(["-q", "add", str(index), str(extra), "--model", model]) == 0
    assert main(["-q", "delete", str(index), "d2"]) == 0
    # Written again in the current version, with the spec read from version 2.
    raw = json.loads((index / "manifest.json").read_text())
    assert raw["manifest_version"] == 3 and "index" not in raw
    assert IndexSpec.from_dict(raw["spec"]) == spec
    searcher = Searcher.load(index, model=model)
    assert len(searcher) == 30
    for method in searcher.methods:
        found = {hit.id for hit in searcher.search("Moon oceans tides", k=30, method=method)}
        assert "n1" in found and "d2" not in found, method
    searcher.close()


def test_a_release_export_loads_through_the_module_path_it_names(release: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    modules = json.loads((release / "export" / "modules.json").read_text())
    assert modules[0]["type"] == "retriever.st_module.RetrieverEncoder"
    model = SentenceTransformer(str(release / "export"), device="cpu", trust_remote_code=True)
    searcher = Searcher.load(release / "flat", model=str(release / "model"))
    queries = list(RECORDED["queries"].values())
    np.testing.assert_allclose(
        model.encode_query(queries), searcher.embed_queries(queries), atol=1e-5
    )
    searcher.close()
