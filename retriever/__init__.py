"""Dense retrieval with LLM embeddings and an EmbedFilter-reduced FAISS index.

The public names are imported on first use, so that ``retriever --help`` (which imports
this package) does not pay for torch, transformers and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BuildOptions": "retriever.index.options",
    "DenseSpec": "retriever.core.spec",
    "EmbedFilter": "retriever.encode.embedfilter",
    "Encoder": "retriever.encode.encoder",
    "EncoderConfig": "retriever.core.spec",
    "FilterSpec": "retriever.core.spec",
    "Hit": "retriever.search.searcher",
    "Index": "retriever.api.index",
    "IndexSpec": "retriever.core.spec",
    "Indexer": "retriever.index.build",
    "ModelSpec": "retriever.core.spec",
    "RetrieverError": "retriever.core.errors",
    "SearchParams": "retriever.core.spec",
    "Searcher": "retriever.search.searcher",
    "SparseSpec": "retriever.core.spec",
    "build_index": "retriever.index.build",
}

__all__ = [
    "BuildOptions",
    "DenseSpec",
    "EmbedFilter",
    "Encoder",
    "EncoderConfig",
    "FilterSpec",
    "Hit",
    "Index",
    "IndexSpec",
    "Indexer",
    "ModelSpec",
    "RetrieverError",
    "SearchParams",
    "Searcher",
    "SparseSpec",
    "__version__",
    "build_index",
]

if TYPE_CHECKING:
    from retriever.api.index import Index
    from retriever.core.errors import RetrieverError
    from retriever.core.spec import (
        DenseSpec,
        EncoderConfig,
        FilterSpec,
        IndexSpec,
        ModelSpec,
        SearchParams,
        SparseSpec,
    )
    from retriever.encode.embedfilter import EmbedFilter
    from retriever.encode.encoder import Encoder
    from retriever.index.build import Indexer, build_index
    from retriever.index.options import BuildOptions
    from retriever.search.searcher import Hit, Searcher


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retriever' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
