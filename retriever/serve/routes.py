"""The HTTP API's endpoints (see :mod:`retriever.serve.app` for the app around them)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI

from retriever.core.errors import RetrieverError
from retriever.search.results import Hit
from retriever.serve.follow import FollowingSearcher, Slot
from retriever.serve.schemas import (
    ApiError,
    BatchRequest,
    BatchResponse,
    DocumentOut,
    Health,
    HitOut,
    Info,
    LensResponse,
    Limits,
    SearchRequest,
    SearchResponse,
)

SNIPPET_CHARS = 300


class Service:
    """What every endpoint shares: the following searcher, one lock, the limits."""

    def __init__(self, following: FollowingSearcher, limits: Limits) -> None:
        self.following = following
        self.limits = limits
        # See retriever.serve.app: a searcher is used by one thread at a time.
        self.compute = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        """One generation's searcher for the whole request (leased before the lock is
        taken, so that opening a new generation never waits for the searches)."""
        with self.following.lease() as slot, self.compute:
            yield slot

    def check_text(self, text: str, what: str = "query") -> None:
        if len(text) > self.limits.max_query_chars:
            raise ApiError(
                413,
                f"the {what} is {len(text):,} characters long; this server takes at most "
                f"{self.limits.max_query_chars:,}",
            )

    def check_k(self, k: int, name: str = "k") -> None:
        if k > self.limits.max_k:
            raise ApiError(422, f"{name} must be at most {self.limits.max_k} here, got {k}")

    def search(self, request: SearchRequest) -> SearchResponse:
        self.check_text(request.query)
        self.check_k(request.k)
        with self.slot() as slot:
            searcher = slot.searcher
            hits = searcher.search(
                request.query,
                k=request.k,
                method=request.method,
                fusion=request.fusion,
                dense_weight=request.dense_weight,
            ).hits()
            shared = searcher.shared_tokens(request.query, hits) if request.explain else None
            return SearchResponse(
                generation=slot.generation,
                query=request.query,
                method=request.method or searcher.methods[0],
                hits=[
                    _hit(hit, None if shared is None else shared[rank])
                    for rank, hit in enumerate(hits)
                ],
            )

    def batch_search(self, request: BatchRequest) -> BatchResponse:
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
        with self.slot() as slot:
            results = slot.searcher.batch_search(
                request.queries,
                k=request.k,
                method=request.method,
                fusion=request.fusion,
                dense_weight=request.dense_weight,
            )
            return BatchResponse(
                generation=slot.generation,
                method=request.method or slot.searcher.methods[0],
                results=results.to_beir(),
            )

    def document(self, doc_id: str) -> DocumentOut:
        with self.slot() as slot:
            docstore = slot.searcher.docstore
            key = docstore.key_of(doc_id)
            if key is None:
                raise ApiError(404, f"no document {doc_id!r} in generation {slot.generation}")
            document = docstore.get(key)
            return DocumentOut(
                generation=slot.generation,
                id=document.id,
                title=document.title,
                text=document.text,
                metadata=document.metadata,
            )

    def lens(
        self, text: str | None, top: int, all_tokens: bool, doc_id: str | None = None
    ) -> LensResponse:
        # The CLI's checks and words (`retriever lens`), then the same Searcher.explain.
        # ``doc_id`` instead of ``text``: a stored document, encoded as a document.
        if (text is None) == (doc_id is None):
            raise RetrieverError("give either text (read as a query) or doc_id, not both")
        if text is not None and not text.strip():
            raise RetrieverError("empty text: give some text to look at")
        if top < 1:
            raise RetrieverError(f"top must be at least 1, got {top}")
        if text is not None:
            self.check_text(text, "text")
        self.check_k(top, "top")
        with self.slot() as slot:
            item: str | Hit = text if text is not None else _stored_hit(slot, doc_id or "")
            found = slot.searcher.explain(item, top=top, words_only=not all_tokens)
            return LensResponse(generation=slot.generation, **found)

    def info(self) -> Info:
        with self.following.lease() as slot:
            described = slot.searcher.manifest.describe()
            return Info(
                **{**described, "generation": slot.generation},
                encoder=described["spec"]["encoder"],
                methods=list(slot.searcher.methods),
                limits=self.limits.to_dict(),
            )


def _stored_hit(slot: Slot, doc_id: str) -> Hit:
    """The stored document ``doc_id`` as a hit (what the lens reads a document from)."""
    docstore = slot.searcher.docstore
    key = docstore.key_of(doc_id)
    if key is None:
        raise ApiError(404, f"no document {doc_id!r} in generation {slot.generation}")
    document = docstore.get(key)
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
    """Every endpoint; each is sync, so FastAPI runs it in its thread pool."""

    @app.get("/search", response_model=SearchResponse)
    def search_get(
        query: str,
        k: int = 10,
        method: str | None = None,
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        explain: bool = False,
    ) -> SearchResponse:
        return service.search(
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
    def search_post(request: SearchRequest) -> SearchResponse:
        return service.search(request)

    @app.post("/batch_search", response_model=BatchResponse)
    def batch_search(request: BatchRequest) -> BatchResponse:
        return service.batch_search(request)

    @app.get("/documents/{doc_id:path}", response_model=DocumentOut)
    def document(doc_id: str) -> DocumentOut:
        return service.document(doc_id)

    @app.get("/lens", response_model=LensResponse)
    def lens(
        text: str | None = None,
        top: int = 20,
        all_tokens: bool = False,
        doc_id: str | None = None,
    ) -> LensResponse:
        return service.lens(text, top, all_tokens, doc_id)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        with service.following.lease() as slot:
            return Health(status="ok", generation=slot.generation)

    @app.get("/info", response_model=Info)
    def info() -> Info:
        return service.info()
