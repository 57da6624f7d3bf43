"""Dynamic batching in `retriever serve` (retriever.serve.batching), on a searcher whose
forward pass takes a known time, and on a real tiny index through HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")

from retriever import Searcher  # noqa: E402
from retriever.core.errors import RetrieverError  # noqa: E402
from retriever.data.datasets import Document  # noqa: E402
from retriever.search.results import Ranking, Results  # noqa: E402
from retriever.serve.app import create_app  # noqa: E402
from retriever.serve.batching import Batcher, Refused, SearchOptions  # noqa: E402
from retriever.serve.follow import Slot  # noqa: E402
from retriever.serve.routes import Service  # noqa: E402
from retriever.serve.schemas import ApiError, BatchRequest, Limits, SearchRequest  # noqa: E402
from tests.test_server import QUERIES, Running, call  # noqa: E402


class SlowSearcher:
    """A searcher whose forward takes ``seconds`` per call, whatever its size (as a
    batched forward nearly does), and whose ranking names each query's text."""

    folder = Path("generation-1")
    methods = ("dense", "bm25")

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.forwards: list[list[str]] = []
        self.encoder = self

    def needs_encoder(self, method: str | None) -> bool:
        if method not in (None, "dense", "bm25"):
            raise RetrieverError(f"unknown method {method!r}")
        return method != "bm25"

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        self.forwards.append(list(texts))
        time.sleep(self.seconds)
        self.finished_at = time.monotonic()
        return np.array([[float(len(text))] for text in texts])

    def rank(self, texts: list[str], k: int, **options: Any) -> Results:
        if options["fusion"] not in ("rrf", "weighted"):
            raise RetrieverError(f"unknown fusion {options['fusion']!r}")
        embeddings = options["embeddings"]
        rankings = []
        for row, text in enumerate(texts):
            score = 0.0 if embeddings is None else float(embeddings[row, 0])
            ranking = Ranking(str(row), [text] * k, np.arange(k), np.full(k, score), self)
            rankings.append(ranking)
        return Results(rankings)

    def get_many(self, keys: list[int]) -> list[Any]:
        assert threading.current_thread().name == "retriever-search", "read off the worker"
        return [Document(f"d{key}", "", "text") for key in keys]


class Following:
    """The one thing Service needs of FollowingSearcher: leases of one slot."""

    def __init__(self, searcher: SlowSearcher) -> None:
        self.slot = Slot(searcher)  # type: ignore[arg-type]
        self.generation = self.slot.generation
        self.released_at: float | None = None

    @contextlib.contextmanager
    def lease(self) -> Iterator[Slot]:
        yield self.slot
        self.released_at = time.monotonic()


@pytest.fixture
def slow() -> Iterator[tuple[Batcher, SlowSearcher, Slot]]:
    searcher = SlowSearcher()
    batcher = Batcher(max_queries=4, wait_s=0.005, max_queued=64)
    yield batcher, searcher, Slot(searcher)  # type: ignore[arg-type]
    batcher.stop(timeout=10)


def _in_future(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def test_concurrent_searches_share_one_forward(slow: Any) -> None:
    batcher, searcher, slot = slow
    blocker = batcher.search(slot, ["first"], SearchOptions(), _in_future())
    time.sleep(0.01)  # the worker is in the first forward: the next ones queue
    waiting = [batcher.search(slot, [f"q{i}"], SearchOptions(), _in_future()) for i in range(4)]
    blocker.result(10)
    answers = [future.result(10) for future in waiting]
    assert searcher.forwards == [["first"], ["q0", "q1", "q2", "q3"]]
    # Each answer is its own query's, in its own place.
    assert [found[0].ids[0] for found in answers] == ["q0", "q1", "q2", "q3"]
    assert batcher.stats.largest_batch == 4 and batcher.stats.batches == 2


def test_options_that_differ_share_the_forward_but_not_the_ranking(slow: Any) -> None:
    batcher, searcher, slot = slow
    blocker = batcher.search(slot, ["first"], SearchOptions(), _in_future())
    time.sleep(0.01)
    five = batcher.search(slot, ["a"], SearchOptions(k=5), _in_future())
    two = batcher.search(slot, ["bb"], SearchOptions(k=2), _in_future())
    lexical = batcher.search(slot, ["ccc"], SearchOptions(k=3, method="bm25"), _in_future())
    blocker.result(10)
    assert len(five.result(10)[0]) == 5 and len(two.result(10)[0]) == 2
    assert lexical.result(10)[0].scores[0] == 0.0  # BM25 gets no embedding
    assert two.result(10)[0].scores[0] == 2.0  # its own row of the shared forward
    assert searcher.forwards == [["first"], ["a", "bb"]]  # BM25's text was not encoded


def test_one_bad_request_does_not_fail_its_batch(slow: Any) -> None:
    batcher, searcher, slot = slow
    blocker = batcher.search(slot, ["first"], SearchOptions(), _in_future())
    time.sleep(0.01)
    good = batcher.search(slot, ["fine"], SearchOptions(), _in_future())
    bad = batcher.search(slot, ["odd"], SearchOptions(fusion="nope"), _in_future())
    blocker.result(10)
    assert good.result(10)[0].ids[0] == "fine"
    with pytest.raises(RetrieverError, match="unknown fusion 'nope'"):
        bad.result(10)
    # Only the bad options' ranking failed: the shared forward ran once, not per job.
    assert searcher.forwards == [["first"], ["fine", "odd"]]
    # An unknown method is refused before it is queued.
    with pytest.raises(RetrieverError, match="unknown method 'nope'"):
        batcher.search(slot, ["x"], SearchOptions(method="nope"), _in_future())


def test_a_full_queue_and_a_passed_deadline_are_refused(slow: Any) -> None:
    batcher, _, slot = slow
    batcher.max_queued = 2
    blocker = batcher.search(slot, ["first"], SearchOptions(), _in_future())
    time.sleep(0.01)
    late = batcher.search(slot, ["late"], SearchOptions(), time.monotonic() + 0.01)
    batcher.search(slot, ["queued"], SearchOptions(), _in_future())
    with pytest.raises(Refused, match=r"busy \(2 requests queued, its limit\)") as full:
        batcher.search(slot, ["one too many"], SearchOptions(), _in_future())
    assert full.value.retry_after == 1
    blocker.result(10)
    with pytest.raises(Refused, match="waited past the server's deadline"):
        late.result(10)
    assert batcher.stats.expired == 1 and batcher.stats.refused_full == 1


def test_stopping_refuses_what_is_queued_and_what_comes(slow: Any) -> None:
    batcher, _, slot = slow
    blocker = batcher.search(slot, ["first"], SearchOptions(), _in_future())
    time.sleep(0.01)
    queued = batcher.search(slot, ["queued"], SearchOptions(), _in_future())
    batcher.stop(timeout=10)
    assert blocker.result(10)[0].ids[0] == "first"  # the batch under way finished
    with pytest.raises(Refused, match="shutting down"):
        queued.result(10)
    with pytest.raises(Refused, match="shutting down"):
        batcher.search(slot, ["after"], SearchOptions(), _in_future())


def test_a_big_batch_takes_turns_with_single_queries() -> None:
    """A 64-query /batch_search in slices of 4 (0.05 s each) and a single search sent
    while it runs: the single one waits for about one slice, not for the whole batch."""
    searcher = SlowSearcher(0.05)
    batcher = Batcher(max_queries=4, wait_s=0.0, max_queued=64)
    service = Service(Following(searcher), batcher, Limits(max_batch=64))  # type: ignore[arg-type]

    async def both() -> tuple[float, float]:
        started = time.monotonic()
        queries = {f"q{i}": f"query {i}" for i in range(64)}
        batch = asyncio.create_task(service.batch_search(BatchRequest(queries=queries, k=1)))
        await asyncio.sleep(0.12)  # two slices in
        sent = time.monotonic()
        answer = await service.search(SearchRequest(query="alone", k=1))
        single = time.monotonic() - sent
        assert answer.hits[0].id == "d0" and answer.hits[0].score == len("alone")
        done = await batch
        assert len(done.results) == 64 and list(done.results["q7"]) == ["query 7"]
        return single, time.monotonic() - started

    try:
        single, whole = asyncio.run(both())
    finally:
        batcher.stop(timeout=10)
    assert whole > 0.75  # 16 slices of 0.05 s
    assert single < 0.2, f"the single query waited {single:.2f} s behind the batch"


def test_a_request_past_its_deadline_is_a_503_with_retry_after() -> None:
    searcher = SlowSearcher(0.3)
    batcher = Batcher(max_queries=4, wait_s=0.0, max_queued=64)
    limits = Limits(request_timeout_s=0.1)
    following = Following(searcher)
    service = Service(following, batcher, limits)  # type: ignore[arg-type]
    try:
        with pytest.raises(ApiError, match=r"did not finish within this server's 0.1 s") as late:
            asyncio.run(service.search(SearchRequest(query="slow", k=1)))
        answered = time.monotonic()
        assert following.released_at is None  # the worker still uses the searcher
        time.sleep(0.5)
    finally:
        batcher.stop(timeout=10)
    assert late.value.status == 503 and late.value.headers == {"Retry-After": "1"}
    # The lease ended when the job did, not when the request gave up.
    assert following.released_at >= searcher.finished_at > answered


# --- the real thing ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import TOY_DOCS, synthetic_docs
    from tests.test_server import _build

    docs = TOY_DOCS + synthetic_docs(30, seed=8)
    return _build(tiny_model, docs, tmp_path_factory.mktemp("batched") / "index")


def test_batched_answers_are_a_lone_searchs(index: Path) -> None:
    """Sixteen clients at once: the answers are batched, and each has the same ids as
    `Searcher.search` of that query alone, scores within float32 rounding."""
    app = create_app(index, batch_wait_ms=20.0)
    running = Running(app)
    searcher = Searcher.load(index)
    try:
        texts = QUERIES * 2
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda t: call(running.url, _path(t)), texts))
        stats = call(running.url, "/stats")[1]["batching"]
        worst = 0.0
        for text, (status, answer) in zip(texts, answers, strict=True):
            alone = searcher.search(text, k=10)
            assert status == 200 and [hit["id"] for hit in answer["hits"]] == list(alone.ids)
            served = np.array([hit["score"] for hit in answer["hits"]])
            worst = max(worst, float(np.abs(served - alone.scores).max()))
        assert worst < 1e-5
        assert stats["largest_batch"] > 1 and stats["queries"] == len(texts)
    finally:
        searcher.close()
        running.stop()


def _path(text: str) -> str:
    import urllib.parse

    return "/search?" + urllib.parse.urlencode({"query": text, "k": 10})


def test_health_answers_while_the_searcher_is_busy(index: Path) -> None:
    app = create_app(index)
    running = Running(app)
    service = app.state.service
    gate = threading.Event()
    try:
        with service.following.lease() as slot:
            busy = service.batcher.call(slot, lambda s: gate.wait(30), _in_future())
            started = time.monotonic()
            assert call(running.url, "/health")[0] == 200
            assert time.monotonic() - started < 1.0
            gate.set()
            busy.result(10)
    finally:
        gate.set()
        running.stop()
