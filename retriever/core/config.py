"""Settings shared by every step, as frozen dataclasses that round-trip through JSON.

The manifest of an index is built from these, so a searcher can rebuild exactly the
encoder and filter that the indexer used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from retriever.core.errors import RetrieverError

MANIFEST_VERSION = 2

# Prompt templates; "{text}" is replaced by the (truncated) input text.
PROMPTS: dict[str, str] = {
    "prompteol": 'This sentence : "{text}" means in one word:"',
    "echo": "Rewrite the following paragraph: {text}. The rewritten paragraph: {text}",
    "none": "{text}",
}
POOLINGS = ("mean", "last")
# The precision of an embedding store's raw vectors (retriever.store.embeddings): float16 halves the
# store; docs/builds.md measures its cosine to float32 and its nDCG@10.
STORE_PRECISIONS = ("float16", "float32")
DEFAULT_STORE_PRECISION = "float16"
DTYPES = ("auto", "float32", "bfloat16", "float16")
BANDS = ("edge", "head", "tail", "rand")
# Search methods: one retriever, or dense fused with another; the default comes first.
METHODS = ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")
# Hybrid fusions: reciprocal rank, or a weighted sum of min-max normalised scores.
FUSIONS = ("rrf", "weighted")
# Token-lens spaces: the raw embedding h, or the filtered vector F h the index stores.
SPACES = ("raw", "filtered")
# How a dense index stores each filtered vector (retriever.parts.dense.codes).
STORAGES = ("float32", "float16", "int8", "binary")
DEFAULT_STORAGE = "float32"
# From the measured frontier (docs/frontier.md): int8 matches float32's nDCG@10 at tau 2-8
# with a quarter of the bytes, but only float32 scores exactly.
DEFAULT_STORAGE_REASON = (
    "on SciFact int8 kept float32's nDCG@10 at tau 2-8 with a quarter of the bytes "
    "(use it when size matters), but float32 is the one storage whose scores are exact, "
    "so an index grown by add answers like a fresh build (docs/frontier.md)"
)
BINARY_CENTRES = ("documents", "zero")
# The lens space whose words a person is shown by default (`search --explain`): the one
# whose displayed top 10 holds a word of the text more often. Measured on 500 SciFact
# documents with the default model and filter (benchmarks/results/lens-display):
# displayed Hit@10 0.998 raw against 0.590 filtered.
DISPLAY_SPACE = "raw"


@dataclass(frozen=True)
class EncoderConfig:
    """How text becomes a pooled embedding (everything the manifest must pin)."""

    prompt: str = "prompteol"
    pooling: str = "mean"
    max_length: int = 256
    query_instruction: str = ""
    document_instruction: str = ""

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise RetrieverError(
                f"unknown prompt style {self.prompt!r}; choose one of {', '.join(PROMPTS)}"
            )
        if self.pooling not in POOLINGS:
            raise RetrieverError(
                f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}"
            )
        if self.max_length < 16:
            raise RetrieverError(f"--max-length must be at least 16 tokens, got {self.max_length}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class FilterSpec:
    """Which EmbedFilter to build: size by ``tau`` (k = d // tau) or by ``dim`` (k = dim);
    with neither, ``tau`` is 2.

    ``band`` is ``edge``, ``head``, ``tail`` or ``rand``; ``start`` overrides it with an
    explicit first row. ``tau == 1`` (or ``dim == d``) is the identity: the unfiltered
    baseline.

    ``remove_mean_direction`` (this project's data-free refinement, docs/method.md)
    is on by default: it is the best data-free variant measured on SciFact (nDCG@10 0.310
    against the paper's exact EmbedFilter 0.251, mean pooling, tau 2, bf16). ``False`` gives the
    paper's EmbedFilter; ``None`` means the default, off at ``tau == 1`` so that tau 1
    stays the unfiltered baseline.
    """

    tau: float | None = None
    dim: int | None = None
    band: str = "edge"
    start: int | None = None
    seed: int = 0
    # After the band, project out the direction of the mean unembedding row seen through
    # the filter (see the docstring).
    remove_mean_direction: bool | None = None

    def __post_init__(self) -> None:
        if self.tau is None and self.dim is None:
            object.__setattr__(self, "tau", 2.0)
        if self.remove_mean_direction is None:
            object.__setattr__(self, "remove_mean_direction", self.tau != 1)
        if self.tau is not None and self.dim is not None:
            raise RetrieverError("give exactly one of --tau and --dim")
        if self.tau is not None and not (self.tau >= 1 and math.isfinite(self.tau)):
            raise RetrieverError(
                f"--tau must be a finite number >= 1 (1 keeps every dimension), got {self.tau}"
            )
        if self.dim is not None and self.dim < 1:
            raise RetrieverError(f"--dim must be a positive number of dimensions, got {self.dim}")
        if self.band not in BANDS:
            raise RetrieverError(f"unknown band {self.band!r}; choose one of {', '.join(BANDS)}")
        if self.start is not None and self.start < 0:
            raise RetrieverError(f"--start must be >= 0, got {self.start}")

    def kept_dims(self, model_dim: int) -> int:
        """The number k of directions kept for a model of hidden size ``model_dim``."""
        k = int(model_dim // self.tau) if self.tau is not None else int(self.dim)
        if not 1 <= k <= model_dim:
            asked = f"--tau {self.tau:g}" if self.tau is not None else f"--dim {self.dim}"
            raise RetrieverError(
                f"{asked} keeps {k} of the model's {model_dim} dimensions; "
                f"it must keep between 1 and {model_dim}"
            )
        return k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterSpec:
        # Manifests written before the default changed always hold the field, so a
        # stored spec never silently picks up the new default.
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class SparseSpec:
    """The key-token sparse index: ``doc_tokens`` (K) kept per document, ``query_tokens``
    (M) aligned tokens added to each query, read from the ``space`` vector."""

    doc_tokens: int = 1000
    query_tokens: int = 50
    space: str = "filtered"

    def __post_init__(self) -> None:
        if self.doc_tokens < 1:
            raise RetrieverError(f"--sparse-doc-tokens must be >= 1, got {self.doc_tokens}")
        if self.query_tokens < 0:
            raise RetrieverError(f"--sparse-query-tokens must be >= 0, got {self.query_tokens}")
        if self.space not in SPACES:
            raise RetrieverError(
                f"unknown sparse space {self.space!r}; choose one of {', '.join(SPACES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseSpec:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
