"""Dense retrieval with LLM embeddings and an EmbedFilter-reduced FAISS index.

The public names are imported on first use, so that ``retriever --help`` (which imports
this package) does not pay for torch, transformers and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "EmbedFilter": "retriever.encode.embedfilter",
    "Encoder": "retriever.encode.encoder",
    "EncoderConfig": "retriever.core.config",
    "FilterSpec": "retriever.core.config",
    "Hit": "retriever.search.searcher",
    "Indexer": "retriever.index.build",
    "RetrieverError": "retriever.core.errors",
    "Searcher": "retriever.search.searcher",
    "build_index": "retriever.index.build",
}

__all__ = [
    "EmbedFilter",
    "Encoder",
    "EncoderConfig",
    "FilterSpec",
    "Hit",
    "Indexer",
    "RetrieverError",
    "Searcher",
    "__version__",
    "build_index",
]

if TYPE_CHECKING:
    from retriever.core.config import EncoderConfig, FilterSpec
    from retriever.core.errors import RetrieverError
    from retriever.encode.embedfilter import EmbedFilter
    from retriever.encode.encoder import Encoder
    from retriever.index.build import Indexer, build_index
    from retriever.search.searcher import Hit, Searcher


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retriever' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
