"""The HTTP API's endpoints (see :mod:`retriever.serve.app` for the app around them).

Each endpoint checks its request, leases the current generation, hands the work to the
:class:`~retriever.serve.batching.Batcher` and awaits it: the event loop never runs a
model, so ``/health`` answers at once however busy the searcher is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from retriever.core.errors import RetrieverError
from retriever.search.results import Hit, Ranking
from retriever.search.searcher import Searcher, has_visible_text
from retriever.serve.batching import Batcher, Refused, SearchOptions
from retriever.serve.follow import FollowingSearcher, Slot
from retriever.serve.schemas import (
    ApiError,
    BatchRequest,
    BatchResponse,
    DocumentOut,
    Health,
    HitOut,
    Info,
    LensesRequest,
    LensesResponse,
    LensResponse,
    Limits,
    SearchRequest,
    SearchResponse,
    Stats,
)

SNIPPET_CHARS = 300
# The jobs the current request has handed to the batcher (see Service.slot).
_submitted: contextvars.ContextVar[list[Future]] = contextvars.ContextVar("submitted")


class Service:
    """What every endpoint shares: the following searcher, the batcher, the limits."""

    def __init__(self, following: FollowingSearcher, batcher: Batcher, limits: Limits) -> None:
        self.following = following
        self.batcher = batcher
        self.limits = limits

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """One generation's searcher for the whole request. Leasing may open a new
        generation, so it runs off the event loop. A request that gave up waiting lets go
        of its lease only when the worker is done with its job (the worker may be using the
        searcher, which the last lease's end can close)."""
        lease = self.following.lease()
        slot = await run_in_threadpool(lease.__enter__)
        submitted = _submitted.set([])
        try:
            yield slot
        finally:
            running = [future for future in _submitted.get() if not future.done()]
            _submitted.reset(submitted)
            if running:
                _release_after(running, lambda: lease.__exit__(None, None, None))
            else:
                await run_in_threadpool(lease.__exit__, None, None, None)

    async def rankings(
        self, slot: Slot, texts: Sequence[str], options: SearchOptions, *, documents: bool = False
    ) -> list[Ranking]:
        return await self._wait(
            lambda deadline: self.batcher.search(
                slot, texts, options, deadline, documents=documents
            )
        )

    async def run(self, slot: Slot, work: Callable[[Searcher], Any]) -> Any:
        return await self._wait(lambda deadline: self.batcher.call(slot, work, deadline))

    async def _wait(self, submit: Callable[[float], Any]) -> Any:
        timeout = self.limits.request_timeout_s
        try:
            future = submit(time.monotonic() + timeout)
            _submitted.get().append(future)
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except Refused as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except TimeoutError:
            raise ApiError(
                503,
                f"the request did not finish within this server's {timeout:g} s; try again "
                "later or ask for less",
                {"Retry-After": "1"},
            ) from None

    def check_text(self, text: str, what: str = "query") -> None:
        if len(text) > self.limits.max_query_chars:
            raise ApiError(
                413,
                f"the {what} is {len(text):,} characters long; this server takes at most "
                f"{self.limits.max_query_chars:,}",
            )

    def check_k(self, k: int, name: str = "k") -> None:
        if k < 1:
            raise RetrieverError(f"{name} must be at least 1, got {k}")
        if k > self.limits.max_k:
            raise ApiError(422, f"{name} must be at most {self.limits.max_k} here, got {k}")

    def check_explained(self, count: int, what: str) -> None:
        if count > self.limits.max_explain:
            raise ApiError(
                422,
                f"{what} re-encodes every document it shows: at most "
                f"{self.limits.max_explain} here, got {count}",
            )

    async def search(self, request: SearchRequest) -> SearchResponse:
        self.check_text(request.query)
        self.check_k(request.k)
        if request.explain:
            self.check_explained(request.k, "explain=true")
        options = _options(request)
        async with self.slot() as slot:
            found = await self.rankings(slot, [request.query], options, documents=True)
            hits = found[0].hits()  # read by the worker already
            shared = None
            if request.explain:
                shared = await self.run(slot, lambda s: s.shared_tokens(request.query, hits))
            return SearchResponse(
                generation=slot.generation,
                query=request.query,
                method=request.method or slot.searcher.methods[0],
                hits=[
                    _hit(hit, None if shared is None else shared[rank])
                    for rank, hit in enumerate(hits)
                ],
            )

    async def batch_search(self, request: BatchRequest) -> BatchResponse:
        if not request.queries:
            raise RetrieverError("no queries: give {query_id: text, ...}")
        if len(request.queries) > self.limits.max_batch:
            raise ApiError(
                413,
                f"{len(request.queries):,} queries in one batch; this server takes at most "
                f"{self.limits.max_batch:,}",
            )
        for text in request.queries.values():
            self.check_text(text)
        self.check_k(request.k)
        ids, options = list(request.queries), _options(request)
        size = self.batcher.max_queries
        run: dict[str, dict[str, float]] = {}
        async with self.slot() as slot:
            # Slice by slice, each queued behind what arrived meanwhile: a lone query
            # waits for at most about one slice of a big batch.
            for start in range(0, len(ids), size):
                part = ids[start : start + size]
                found = await self.rankings(slot, [request.queries[q] for q in part], options)
                run.update({q: ranking.to_dict() for q, ranking in zip(part, found, strict=True)})
            return BatchResponse(
                generation=slot.generation,
                method=request.method or slot.searcher.methods[0],
                results=run,
            )

    async def document(self, doc_id: str) -> DocumentOut:
        _check_id(doc_id)
        async with self.slot() as slot:
            _, document = await self.run(slot, lambda s: _stored(s, slot, doc_id))
            return DocumentOut(
                generation=slot.generation,
                id=document.id,
                title=document.title,
                text=document.text,
                metadata=document.metadata,
            )

    async def lens(
        self, text: str | None, top: int, all_tokens: bool, doc_id: str | None = None
    ) -> LensResponse:
        # The CLI's checks and words (`retriever lens`), then the same Searcher.explain.
        # ``doc_id`` instead of ``text``: a stored document, encoded as a document.
        if (text is None) == (doc_id is None):
            raise RetrieverError("give either text (read as a query) or doc_id, not both")
        if text is not None:
            _check_lens_text(text)
            self.check_text(text, "text")
        else:
            _check_id(doc_id or "")
        self.check_k(top, "top")
        async with self.slot() as slot:

            def explain(searcher: Searcher) -> dict[str, Any]:
                item = text if text is not None else _stored_hit(searcher, slot, doc_id or "")
                return searcher.explain(item, top=top, words_only=not all_tokens)

            return LensResponse(generation=slot.generation, **await self.run(slot, explain))

    async def lenses(self, request: LensesRequest) -> LensesResponse:
        """The query's lens and each listed document's, encoded in two batches."""
        _check_lens_text(request.query)
        self.check_text(request.query, "query")
        self.check_k(request.top, "top")
        self.check_explained(len(request.doc_ids), "lenses")
        for doc_id in request.doc_ids:
            _check_id(doc_id)

        async with self.slot() as slot:

            def explain(searcher: Searcher) -> list[dict[str, Any]]:
                hits = [_stored_hit(searcher, slot, doc_id) for doc_id in request.doc_ids]
                items: list[str | Hit] = [request.query, *hits]
                return searcher.explain_many(items, request.top, words_only=not request.all_tokens)

            query, *documents = await self.run(slot, explain)
            return LensesResponse(
                generation=slot.generation,
                query=query,
                documents=dict(zip(request.doc_ids, documents, strict=True)),
            )

    def info(self) -> Info:
        with self.following.lease() as slot:
            described = slot.searcher.manifest.describe()
            return Info(
                **{**described, "generation": slot.generation},
                encoder=described["spec"]["encoder"],
                methods=list(slot.searcher.methods),
                limits=self.limits.to_dict(),
            )


def _release_after(futures: list[Future], release: Callable[[], object]) -> None:
    """Call ``release`` once every future in ``futures`` is done (in the thread ending the
    last one)."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            release()

    for future in futures:
        future.add_done_callback(one_done)


def _options(request: SearchRequest | BatchRequest) -> SearchOptions:
    return SearchOptions(request.k, request.method, request.fusion, request.dense_weight)


def _check_id(doc_id: str) -> None:
    if not has_visible_text(doc_id):
        raise RetrieverError("empty document id: give the id of a stored document")


def _check_lens_text(text: str) -> None:
    if not has_visible_text(text):
        raise RetrieverError("empty text: give some text to look at")


def _stored(searcher: Searcher, slot: Slot, doc_id: str) -> tuple[int, Any]:
    """``(key, document)`` of the stored document ``doc_id``, or a 404."""
    docstore = searcher.docstore
    key = docstore.key_of(doc_id)
    if key is None:
        raise ApiError(404, f"no document {doc_id!r} in generation {slot.generation}")
    return key, docstore.get(key)


def _stored_hit(searcher: Searcher, slot: Slot, doc_id: str) -> Hit:
    """The stored document ``doc_id`` as a hit (what the lens reads a document from)."""
    key, document = _stored(searcher, slot, doc_id)
    return Hit(document.id, 0.0, document.title, document.text, key, document.metadata)


def _hit(hit: Hit, shared: Sequence[Any] | None) -> HitOut:
    text = " ".join(hit.text.split())
    snippet = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."
    return HitOut(
        id=hit.id,
        score=hit.score,
        title=hit.title,
        snippet=snippet,
        metadata=hit.metadata,
        shared_tokens=None if shared is None else [token.to_dict() for token in shared],
    )


def add_routes(app: FastAPI, service: Service) -> None:
    """Every endpoint. The searching ones are async and wait on the batcher; ``/info``
    reads a manifest in FastAPI's thread pool."""

    @app.get("/search", response_model=SearchResponse)
    async def search_get(
        query: str,
        k: int = 10,
        method: str | None = None,
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        explain: bool = False,
    ) -> SearchResponse:
        return await service.search(
            SearchRequest(
                query=query,
                k=k,
                method=method,
                fusion=fusion,
                dense_weight=dense_weight,
                explain=explain,
            )
        )

    @app.post("/search", response_model=SearchResponse)
    async def search_post(request: SearchRequest) -> SearchResponse:
        return await service.search(request)

    @app.post("/batch_search", response_model=BatchResponse)
    async def batch_search(request: BatchRequest) -> BatchResponse:
        return await service.batch_search(request)

    @app.get("/documents/{doc_id:path}", response_model=DocumentOut)
    async def document(doc_id: str) -> DocumentOut:
        return await service.document(doc_id)

    @app.get("/lens", response_model=LensResponse)
    async def lens(
        text: str | None = None,
        top: int = 20,
        all_tokens: bool = False,
        doc_id: str | None = None,
    ) -> LensResponse:
        return await service.lens(text, top, all_tokens, doc_id)

    @app.post("/lenses", response_model=LensesResponse)
    async def lenses(request: LensesRequest) -> LensesResponse:
        return await service.lenses(request)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        # No lease and no queue: a probe is answered however busy the searcher is.
        return Health(status="ok", generation=service.following.generation)

    @app.get("/stats", response_model=Stats)
    async def stats() -> Stats:
        return Stats(queued=service.batcher.queued, batching=service.batcher.stats.to_dict())

    @app.get("/info", response_model=Info)
    def info() -> Info:
        return service.info()
