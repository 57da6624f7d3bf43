"""The manifest of an index folder: what built it, checked before anything else is read.

A manifest is validated against a small schema (every key a reader uses, with its type),
so a damaged or hand-made manifest fails with one line naming the key, never a
``KeyError`` deep in a loader. The encoder an index needs is resolved from the manifest,
and its weights' hash is compared *before* any of its weights are loaded.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from retriever.core.config import MANIFEST_VERSION, EncoderConfig
from retriever.core.errors import RetrieverError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "retriever-index"

# key path -> the types it may hold (None: the key may be null or absent).
_SCHEMA: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "manifest_version": (int,),
    "model": (dict,),
    "model.name": (str,),
    "model.weights_sha256": (str,),
    "model.dtype": (str,),
    "model.hidden_size": (int,),
    "encoder": (dict,),
    "encoder.prompt": (str,),
    "encoder.pooling": (str,),
    "encoder.max_length": (int,),
    "filter": (dict,),
    "filter.model_dim": (int,),
    "filter.dim": (int,),
    "documents": (dict,),
    "documents.count": (int,),
    "documents.next_key": (int,),
    "documents.content_sha256": (str,),
}
_OPTIONAL_PARTS = {
    "index": {"type": (str,), "dim": (int,), "count": (int,), "search_params": (dict,)},
    "sparse": {"count": (int,), "doc_tokens": (int,), "query_tokens": (int,), "space": (str,)},
    "bm25": {"count": (int,)},
}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in (
        "retriever",
        "torch",
        "transformers",
        "faiss-cpu",
        "faiss-gpu",
        "numpy",
        "lmdb",
        "scipy",
        "bm25s",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def _lookup(manifest: dict[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Check the shape of a parsed manifest; returns it, or raises naming the fault."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RetrieverError(f"{path} is not a retriever index manifest")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise RetrieverError(
            f"{path.parent} was written with manifest version "
            f"{manifest.get('manifest_version')}, this retriever reads version "
            f"{MANIFEST_VERSION}: rebuild the index"
        )
    checks = dict(_SCHEMA)
    for part, fields in _OPTIONAL_PARTS.items():
        if manifest.get(part) is not None:
            checks[part] = (dict,)
            checks.update({f"{part}.{name}": types for name, types in fields.items()})
    for dotted, types in checks.items():
        value = _lookup(manifest, dotted)
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise RetrieverError(
                f"{path} is damaged: {dotted!r} should be {expected}, it is {found}; "
                "rebuild the index"
            )
    if not any(manifest.get(part) for part in _OPTIONAL_PARTS):
        raise RetrieverError(f"{path} is damaged: it names no index part; rebuild the index")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise RetrieverError(
            f"{folder} is not a retriever index (no {MANIFEST_FILE}); build one with "
            "`retriever index DATASET --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    return validate_manifest(manifest, path)


def load_encoder_for(
    manifest: dict[str, Any],
    folder: Path,
    *,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> Any:
    """The encoder that made an index's vectors, its weights' hash checked before loading.

    ``model`` overrides where the model is found (a local copy of the same weights); by
    default the manifest's name is used. ``dtype`` defaults to the one the index was built
    with, so queries are encoded like the documents were.
    """
    from retriever.encode.encoder import Encoder

    built_with = manifest["model"]
    borrowed = (built_with.get("unembedding_from") or {}).get("name")
    return Encoder.load(
        model or built_with["name"],
        EncoderConfig.from_dict(manifest["encoder"]),
        dtype=dtype or built_with["dtype"],
        device=device,
        batch_size=batch_size,
        revision=built_with.get("revision") if model is None else None,
        unembedding_from=borrowed,
        expected_weights_sha256=built_with["weights_sha256"],
        expected_by=str(folder),
    )
