"""How a build or a change runs: options that do not change what the index is.

The device, batch size and runtime that encode, the store the raw embeddings are kept
in, Ray, the GPU and ``overwrite`` change how long a build takes and where its bytes
go, never the index it writes; so they are never saved, unlike the
:class:`~retriever.core.spec.IndexSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.store.embeddings import DEFAULT_STORE_PRECISION
from retriever.store.encoding import check_store_options


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`~retriever.index.build.build_index` and the changes run.

    ``limit``: only the first N documents; ``store``: the embedding store folder (default:
    one in the cache named by the encoding); ``from_store``: assemble a complete store
    instead of encoding a corpus; ``chunk_size``: documents per shard; ``restart``: empty
    a store holding another encoding; ``ray``: a
    :class:`~retriever.store.on_ray.RayOptions`; ``use_gpu``: FAISS on the GPU (None:
    when one is seen); ``runtime``: ``torch`` or ``onnx``.
    """

    limit: int | None = None
    batch_size: int = 16
    device: str | None = None
    runtime: str = "torch"
    use_gpu: Any = None
    store: str | Path | None = None
    from_store: str | Path | None = None
    chunk_size: int | None = None
    store_precision: str = DEFAULT_STORE_PRECISION
    restart: bool = False
    ray: Any = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        # The limit, batch size and runtime are checked where they are used (the corpus
        # scan, the encoder), before the model loads.
        check_store_options(self.store, self.chunk_size, "--store")
