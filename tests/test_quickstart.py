"""README's quickstart, run as a newcomer runs it: `bash scripts/quickstart.sh` builds an
index of the shipped corpus with the embedded model and prints explained hits.

Its time is a benchmark (benchmarks/quickstart.py), not asserted here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retriever import Searcher
from retriever.data.datasets import load_corpus, load_qrels, load_queries
from tests.conftest import QUICKSTART, ROOT, USER_CACHE

HIT = re.compile(r"^\s+(\d+)\. (-?\d+\.\d+)\s+(\S+)", re.MULTILINE)


def test_the_quickstart_corpus_is_a_beir_folder_whose_judgements_name_its_documents() -> None:
    ids = {document.id for document in load_corpus(QUICKSTART).documents}
    queries, qrels = load_queries(QUICKSTART), load_qrels(QUICKSTART)
    assert len(ids) == 48 and set(qrels) == set(queries)
    assert all(set(judged) <= ids for judged in qrels.values())


@pytest.mark.slow
def test_the_quickstart_builds_and_searches_with_the_embedded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "quickstart"
    retriever = Path(sys.executable).with_name("retriever")
    done = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env={
            **os.environ,
            "INDEX": str(index),
            "RETRIEVER": str(retriever),
            "RETRIEVER_CACHE": str(USER_CACHE),  # where the set-up converted the model
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    dense, hybrid = done.stdout.split("== the same query, dense fused with BM25")
    for printed in (dense, hybrid):
        hits = HIT.findall(printed)
        assert [int(rank) for rank, _, _ in hits] == [1, 2, 3]
        assert "photosynthesis" in [doc_id for _, _, doc_id in hits]
    assert dense.count("shared tokens:") == 3
    assert "index of 48 documents written" in done.stderr
    monkeypatch.setenv("RETRIEVER_CACHE", str(USER_CACHE))
    searcher = Searcher.load(index)  # what README's Python section opens next
    assert tuple(searcher.methods) == ("dense", "bm25", "dense+bm25")
    searcher.close()
