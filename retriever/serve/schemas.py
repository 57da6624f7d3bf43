"""The HTTP API's request and response models and its limits (see :mod:`retriever.serve.app`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; over a limit is refused with 413 (size) or 422 (k)."""

    max_k: int = 1000
    max_query_chars: int = 4096
    max_batch: int = 256
    max_body_bytes: int = 4 << 20

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ApiError(Exception):
    """A refusal with its HTTP status and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


class LensResponse(BaseModel):
    generation: str
    text: str
    raw: list[Token]
    filtered: list[Token]


class Health(BaseModel):
    status: str
    generation: str


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
    limits: dict[str, int]
