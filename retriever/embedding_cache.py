"""On-disk cache of raw pooled embeddings, so a corpus is encoded once per setting.

The key covers everything that changes the vectors: the model's weights hash, the dtype,
prompt, instruction, max length, pooling, whether the texts are queries or documents,
and a hash of the texts themselves (so a different corpus, slice or order misses).
Filters and baselines are applied afterwards, so every variant reuses one encoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder
from retriever.models import cache_dir

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))  # unambiguous boundaries
        digest.update(encoded)
    return digest.hexdigest()


def cache_key(encoder: Encoder, texts_hash: str, *, pooling: str, queries: bool) -> dict:
    config = encoder.config
    return {
        "format": CACHE_FORMAT,
        "model_weights_sha256": encoder.resolved.weights_sha256,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "prompt": config.prompt,
        "instruction": config.query_instruction if queries else config.document_instruction,
        "max_length": config.max_length,
        "pooling": pooling,
        "kind": "queries" if queries else "documents",
        "texts_sha256": texts_hash,
    }


def cached_embeddings(
    encoder: Encoder,
    texts: Sequence[str],
    poolings: Sequence[str],
    *,
    queries: bool,
    root: Path | None = None,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """``{pooling: (n, d) float32}``, read from the cache or encoded (once for all misses)."""
    folder = (root or cache_dir()) / "embeddings"
    texts_hash = texts_sha256(texts)
    keys = {p: cache_key(encoder, texts_hash, pooling=p, queries=queries) for p in poolings}
    paths = {
        p: folder / f"{hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()}.npy"
        for p, k in keys.items()
    }
    found = {p: np.load(path) for p, path in paths.items() if path.is_file()}
    missing = [p for p in poolings if p not in found]
    if found:
        logger.info("embedding cache hit for %s pooling of %d texts", "/".join(found), len(texts))
    if missing:
        encoded = encoder.encode_poolings(
            texts, missing, queries=queries, show_progress=show_progress
        )
        folder.mkdir(parents=True, exist_ok=True)
        for pooling in missing:
            _atomic_save(paths[pooling], encoded[pooling], keys[pooling])
        found.update(encoded)
    return {p: found[p] for p in poolings}


def _atomic_save(path: Path, array: np.ndarray, key: dict) -> None:
    handle, staging = tempfile.mkstemp(dir=path.parent, suffix=".npy.partial")
    with os.fdopen(handle, "wb") as stream:
        np.save(stream, array, allow_pickle=False)
    path.with_suffix(".json").write_text(json.dumps(key, indent=2) + "\n")
    os.replace(staging, path)
