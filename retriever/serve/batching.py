"""Dynamic batching: concurrent searches share one LLM forward pass and one FAISS search.

One worker thread does every piece of work that touches a searcher (the tokenizer, the
process-wide BLAS settings and the docstore are not safe to share between threads), so
nothing else needs a lock. Requests put jobs on one bounded queue and wait on a future:

- a *search* job holds a few queries. The worker takes the oldest job, then every other
  queued search on the same generation, up to ``max_queries`` queries, waiting at most
  ``wait_s`` for more to arrive while the batch is short. The batch's texts go through
  the encoder in one forward; each group of jobs with the same options is then ranked
  together from those embeddings (``Searcher.rank(embeddings=...)``, the one search path).
- a *call* job (a document, a lens, an explanation) runs alone, in its turn.

A big ``/batch_search`` is cut into slices of ``max_queries`` that are queued one after the
other, so a single query never waits behind more than about one slice. A queue at its
bound refuses with 503, a job past its deadline is dropped before it runs, and
:meth:`Batcher.stop` refuses what is queued (see :mod:`retriever.serve.app` for the HTTP side).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from retriever.search.results import Ranking
from retriever.search.searcher import Searcher, check_queries
from retriever.serve.follow import Slot

logger = logging.getLogger("retriever")


class Refused(Exception):
    """Work the batcher will not do: the queue is full, it is stopping, or a deadline passed."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class SearchOptions:
    """What must match for two searches to be ranked together."""

    k: int = 10
    method: str | None = None
    fusion: str = "rrf"
    dense_weight: float = 0.5


@dataclass
class _Job:
    slot: Slot
    deadline: float
    future: Future = field(default_factory=Future)
    texts: Sequence[str] = ()
    options: SearchOptions | None = None  # None: a call job
    documents: bool = False  # read the hits' documents too (in the worker, like all reads)
    call: Callable[[Searcher], Any] | None = None

    @property
    def is_search(self) -> bool:
        return self.options is not None


@dataclass
class BatchStats:
    """What the worker has done: enough to see where its time goes."""

    batches: int = 0
    queries: int = 0
    calls: int = 0
    largest_batch: int = 0
    encode_s: float = 0.0
    rank_s: float = 0.0
    call_s: float = 0.0
    expired: int = 0
    refused_full: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return dict(vars(self))


class Batcher:
    """The worker and its queue; see the module docstring."""

    def __init__(self, *, max_queries: int = 16, wait_s: float = 0.002, max_queued: int = 128):
        self.max_queries = max_queries
        self.wait_s = wait_s
        self.max_queued = max_queued
        self.stats = BatchStats()
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="retriever-search", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def search(
        self,
        slot: Slot,
        texts: Sequence[str],
        options: SearchOptions,
        deadline: float,
        *,
        documents: bool = False,
    ) -> Future:
        """A future of one :class:`Ranking` per text, best first; ``documents``: with its
        hits' documents read (``Ranking.hits()``)."""
        # Refused here, not inside someone else's batch.
        check_queries(texts)
        slot.searcher.needs_encoder(options.method)  # an unknown method
        job = _Job(slot, deadline, texts=list(texts), options=options, documents=documents)
        return self._put(job)

    def call(self, slot: Slot, work: Callable[[Searcher], Any], deadline: float) -> Future:
        """A future of ``work(searcher)``, run alone in the worker."""
        return self._put(_Job(slot, deadline, call=work))

    def _put(self, job: _Job) -> Future:
        with self._ready:
            if self._stopping:
                raise Refused("the server is shutting down; try again later", retry_after=5)
            if len(self._queue) >= self.max_queued:
                self.stats.refused_full += 1
                raise Refused(
                    f"the server is busy ({len(self._queue)} requests queued, its limit); "
                    "try again shortly",
                    retry_after=1,
                )
            self._queue.append(job)
            self._ready.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work and what is queued; the batch under way finishes. Waits up to
        ``timeout`` seconds for the worker to end (None: do not wait)."""
        with self._ready:
            self._stopping = True
            refused, self._queue = list(self._queue), collections.deque()
            self._ready.notify_all()
        for job in refused:
            _fail(job, Refused("the server is shutting down; try again later", retry_after=5))
        if timeout is not None:
            self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            live = [job for job in jobs if self._still_wanted(job)]
            if not live:
                continue
            if live[0].is_search:
                self._run_searches(live)
            else:
                self._run_call(live[0])

    def _next_jobs(self) -> list[_Job] | None:
        """The oldest job, with every compatible queued search (None once stopping)."""
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            if not first.is_search:
                return [first]
            batch, size = [first], len(first.texts)
            give_up = time.monotonic() + self.wait_s
            while size < self.max_queries and not self._stopping:
                size += self._take_compatible(first.slot, batch, self.max_queries - size)
                left = give_up - time.monotonic()
                if size >= self.max_queries or left <= 0:
                    break
                self._ready.wait(left)
            return batch

    def _take_compatible(self, slot: Slot, batch: list[_Job], room: int) -> int:
        """Move queued searches on ``slot`` that fit in ``room`` queries into ``batch``."""
        taken = 0
        for job in list(self._queue):
            if job.is_search and job.slot is slot and len(job.texts) <= room - taken:
                self._queue.remove(job)
                batch.append(job)
                taken += len(job.texts)
        return taken

    def _still_wanted(self, job: _Job) -> bool:
        if not job.future.set_running_or_notify_cancel():
            return False  # its request gave up waiting
        if time.monotonic() > job.deadline:
            self.stats.expired += 1
            _fail(job, Refused("the request waited past the server's deadline", retry_after=1))
            return False
        return True

    def _run_searches(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        queries = sum(len(job.texts) for job in jobs)
        try:
            found, encode_s = _search_together(jobs)
        except Exception as exc:  # the shared forward failed: every job gets the error
            found, encode_s = [exc] * len(jobs), 0.0
        self.stats.batches += 1
        self.stats.queries += queries
        self.stats.largest_batch = max(self.stats.largest_batch, queries)
        self.stats.encode_s += encode_s
        self.stats.rank_s += time.perf_counter() - started - encode_s
        for job, answer in zip(jobs, found, strict=True):
            if isinstance(answer, BaseException):
                _fail(job, answer)
            else:
                job.future.set_result(answer)

    def _run_call(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            job.future.set_result(job.call(job.slot.searcher))
        except BaseException as exc:
            _fail(job, exc)
        self.stats.calls += 1
        self.stats.call_s += time.perf_counter() - started


def _search_together(jobs: list[_Job]) -> tuple[list[list[Ranking] | Exception], float]:
    """Each job's rankings (or the error of its group), and the seconds the one forward
    took: the texts that need the encoder are encoded together, then jobs with equal
    options are ranked in one call. Options that fail fail only the jobs that share them."""
    searcher = jobs[0].slot.searcher
    encoded = [job for job in jobs if searcher.needs_encoder(job.options.method)]
    started = time.perf_counter()
    embeddings = (
        searcher.encoder.encode_queries([text for job in encoded for text in job.texts])
        if encoded
        else None
    )
    encode_s = time.perf_counter() - started
    rows: dict[int, list[int]] = {}  # each encoded job's rows of ``embeddings``
    at = 0
    for job in encoded:
        rows[id(job)] = list(range(at, at + len(job.texts)))
        at += len(job.texts)
    groups: dict[SearchOptions, list[_Job]] = collections.defaultdict(list)
    for job in jobs:
        groups[job.options].append(job)
    found: dict[int, list[Ranking] | Exception] = {}
    for options, members in groups.items():
        needs = id(members[0]) in rows
        try:
            results = searcher.rank(
                [text for job in members for text in job.texts],
                options.k,
                method=options.method,
                fusion=options.fusion,
                dense_weight=options.dense_weight,
                embeddings=embeddings[[r for job in members for r in rows[id(job)]]]
                if needs
                else None,
            )
        except Exception as exc:
            found.update({id(job): exc for job in members})
            continue
        rankings = iter(results.rankings)
        for job in members:
            found[id(job)] = [next(rankings) for _ in job.texts]
            if job.documents:
                for ranking in found[id(job)]:
                    ranking.hits()  # read now, here: the docstore is this thread's
    return [found[id(job)] for job in jobs], encode_s


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
