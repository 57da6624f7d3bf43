"""The per-query path does no avoidable work: counted calls, not timings."""

from __future__ import annotations

import threading
from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer

from retriever import Searcher, build_index
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.index.manifest import Manifest
from retriever.parts import docstore as docstore_module
from retriever.parts.bm25 import STEMMER_LANGUAGE, Analyzer
from retriever.parts.dense.backends import DenseBackend
from retriever.parts.sparse import SparseSpec
from tests.conftest import TOY_DOCS, TRAINING_TEXTS, synthetic_docs, write_jsonl

QUERIES = ["bone disease", "The quick brown fox", "protein folding in cells"]


@pytest.fixture(scope="module")
def searcher(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    root = tmp_path_factory.mktemp("overhead")
    folder = build_index(
        write_jsonl(root / "docs.jsonl", TOY_DOCS + synthetic_docs(30)),
        root / "index",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            sparse=SparseSpec(doc_tokens=30, query_tokens=5),
            bm25=True,
        ),
    )
    loaded = Searcher.load(folder, dtype="float32")
    yield loaded
    loaded.close()


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls = [0]
    real = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("method", ["dense", "sparse", "dense+sparse", "dense+bm25"])
def test_a_query_is_filtered_once(
    searcher: Searcher, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    expected = searcher.search(QUERIES[0], k=5, method=method)
    transforms = _count_calls(monkeypatch, searcher.filter, "transform")
    assert searcher.search(QUERIES[0], k=5, method=method) == expected
    assert transforms == [1]


def test_a_run_reads_ids_without_decoding_documents(
    searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = {
        str(i): {hit.id: hit.score for hit in searcher.search(q, k=4, method="dense+bm25")}
        for i, q in enumerate(QUERIES)
    }
    decodes = _count_calls(monkeypatch, docstore_module, "_decode")
    assert searcher.batch_search(QUERIES, k=4, method="dense+bm25").to_beir() == expected
    assert decodes == [0]


def test_a_bm25_query_builds_no_stemmer_and_starts_no_thread(
    searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [searcher.search(q, k=5, method="bm25") for q in QUERIES]
    stemmers = _count_calls(monkeypatch, Stemmer, "Stemmer")
    threads = _count_calls(monkeypatch, threading.Thread, "start")
    for _ in range(5):
        assert [searcher.search(q, k=5, method="bm25") for q in QUERIES] == expected
    assert stemmers == [0] and threads == [0]


def test_the_analyzer_tokenizes_as_bm25s_does() -> None:
    texts = [
        *TRAINING_TEXTS[:7],
        *(d["title"] + " " + d["text"] for d in TOY_DOCS),
        "",
        "the and of",  # stopwords only
        "Running runners RAN; re-ran x y 42 3.14 __init__ Straße İstanbul",
    ]
    expected = bm25s.tokenize(
        texts,
        stopwords="en",
        stemmer=Stemmer.Stemmer(STEMMER_LANGUAGE),
        return_ids=False,
        show_progress=False,
    )
    assert Analyzer()(texts) == expected


def test_threads_share_one_bm25_index(searcher: Searcher) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queries = [d["title"] + " " + d["text"] for d in synthetic_docs(40, seed=3)]
    serial = searcher.bm25.search(queries, 5)
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: searcher.bm25.search([q], 5), queries))
    for i, (scores, keys) in enumerate(parallel):
        np.testing.assert_array_equal(keys[0], serial[1][i])
        np.testing.assert_array_equal(scores[0], serial[0][i])


# --- one GPU index, many threads ------------------------------------------------------


class _RecordingBackend(DenseBackend):
    """A dense backend that records how many threads are inside ``search`` at once.

    With ``wait_for_company`` a search waits (up to a generous bound) until a second thread
    is inside too, so threads that may overlap are seen to, however busy the machine; a
    guarded backend must not wait, since no second thread can come in.
    """

    kind = "fake"
    dim = 4

    def __init__(self, *, on_gpu: bool, wait_for_company: bool) -> None:
        self.on_gpu = on_gpu
        self.wait_for_company = wait_for_company
        self.inside = 0
        self.most_inside = 0
        self.company = threading.Event()
        self._count_lock = threading.Lock()

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside > 1:
                self.company.set()
        if self.wait_for_company:
            self.company.wait(300)
        with self._count_lock:
            self.inside -= 1
        return np.zeros((len(vectors), k), np.float32), np.zeros((len(vectors), k), np.int64)


def _most_threads_inside(backend: _RecordingBackend) -> int:
    manifest = Manifest(spec=IndexSpec(), model={}, filter={}, documents={"count": 10})
    searcher = Searcher(Path("."), manifest, None, None, backend, None)
    start = threading.Barrier(8)

    def search() -> None:
        start.wait()
        for _ in range(10):
            searcher.search_vectors(np.zeros((1, 4), np.float32), 3)

    threads = [threading.Thread(target=search) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return backend.most_inside


def test_a_gpu_index_is_searched_by_one_thread_at_a_time() -> None:
    assert _most_threads_inside(_RecordingBackend(on_gpu=True, wait_for_company=False)) == 1
    # CPU: no lock, so a second thread comes in while the first waits for it.
    assert _most_threads_inside(_RecordingBackend(on_gpu=False, wait_for_company=True)) > 1


def test_a_cpu_faiss_searcher_takes_no_lock(searcher: Searcher) -> None:
    assert not searcher.index.on_gpu
    assert not isinstance(searcher._dense_guard, type(threading.Lock()))
