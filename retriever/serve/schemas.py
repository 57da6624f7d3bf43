"""The HTTP API's request and response models and its limits (see :mod:`retriever.serve.app`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how long it may wait.

    Over a size limit is refused with 413, a k or an explanation over its limit with 422;
    past ``max_queued`` waiting requests the answer is 503 with ``Retry-After``, and so is
    a request (or one slice of a batch) not answered within ``request_timeout_s``.
    """

    max_k: int = 1000
    max_query_chars: int = 4096
    max_batch: int = 256
    max_body_bytes: int = 4 << 20
    max_explain: int = 20
    max_queued: int = 128
    request_timeout_s: float = 30.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class ApiError(Exception):
    """A refusal with its HTTP status, one-line message and any headers (``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# --- request and response models ---------------------------------------------------------


class SearchRequest(BaseModel):
    query: str
    k: int = 10
    method: str | None = None
    fusion: str = "rrf"
    dense_weight: float = 0.5
    explain: bool = False


class BatchRequest(BaseModel):
    queries: dict[str, str]
    k: int = 10
    method: str | None = None
    fusion: str = "rrf"
    dense_weight: float = 0.5


class Token(BaseModel):
    token: str
    score: float
    id: int


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    snippet: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    shared_tokens: list[Token] | None = None


class SearchResponse(BaseModel):
    generation: str
    query: str
    method: str
    hits: list[HitOut]


class BatchResponse(BaseModel):
    generation: str
    method: str
    results: dict[str, dict[str, float]]


class DocumentOut(BaseModel):
    generation: str
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Lens(BaseModel):
    text: str
    raw: list[Token]
    filtered: list[Token]


class LensResponse(Lens):
    generation: str


class LensesRequest(BaseModel):
    query: str
    doc_ids: list[str]
    top: int = 8
    all_tokens: bool = False


class LensesResponse(BaseModel):
    generation: str
    query: Lens
    documents: dict[str, Lens]


class Health(BaseModel):
    status: str
    generation: str


class Stats(BaseModel):
    queued: int
    batching: dict[str, float]


class Info(BaseModel):
    generation: str
    created: str | None
    documents: int
    methods: list[str]
    spec: dict[str, Any]
    model: dict[str, Any]
    encoder: dict[str, Any]
    filter: dict[str, Any]
    storage: dict[str, Any] | None
    parts: dict[str, Any]
    bytes: dict[str, int]
    manifest_version: int
    versions: dict[str, str | None]
    limits: dict[str, float]
