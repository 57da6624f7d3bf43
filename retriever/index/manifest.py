"""The manifest of an index folder: its spec as written, and what the build found.

This is the one module that reads or writes a manifest's raw JSON. Everything else holds
a :class:`Manifest`: the :class:`~retriever.core.spec.IndexSpec` the index was built by
(saved verbatim under ``spec``), and beside it what the build found, which no one chose:
the model's weights hash, dtype and hidden size, the filter's rows, each part's count and
backend description (the codes FAISS reports), the documents' digest and history, the
bytes, seconds and library versions.

A manifest is checked against a small schema (every key a reader uses, with its type), so
a damaged or hand-made manifest fails with one line naming the key, never a ``KeyError``
deep in a loader. Version 2 manifests (before the spec) are read through
:func:`_upgraded_v2`, which rebuilds their spec from the fields they kept; a writer
(add, delete) then saves version 3.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.spec import (
    DEFAULT_COLLECTION,
    DenseSpec,
    EncoderConfig,
    FilterSpec,
    IndexSpec,
    ModelSpec,
    SearchParams,
    SparseSpec,
)
from retriever.core.versions import installed_version

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "retriever-index"
MANIFEST_VERSION = 3
READABLE_VERSIONS = (2, 3)
# Packages whose versions a manifest records: what built the index, for a reader to compare.
MANIFEST_PACKAGES = (
    "retriever",
    "torch",
    "transformers",
    "faiss-cpu",
    "faiss-gpu",
    "numpy",
    "lmdb",
    "scipy",
    "bm25s",
)

# key path -> the types it may hold, in a version 3 manifest.
_SCHEMA: dict[str, tuple[type, ...]] = {
    "spec": (dict,),
    "model": (dict,),
    "model.name": (str,),
    "model.weights_sha256": (str,),
    "model.dtype": (str,),
    "model.hidden_size": (int,),
    "filter": (dict,),
    "filter.model_dim": (int,),
    "filter.dim": (int,),
    "documents": (dict,),
    "documents.count": (int,),
    "documents.next_key": (int,),
    "documents.content_sha256": (str,),
}
_FOUND_PARTS = {
    "dense": {"dim": (int,), "count": (int,), "backend": (dict,)},
    "sparse": {"count": (int,)},
    "bm25": {"count": (int,)},
}
# Version 2 kept the dense part under "index" and its settings beside what was found.
_SCHEMA_V2: dict[str, tuple[type, ...]] = {
    **{k: v for k, v in _SCHEMA.items() if k != "spec"},
    "encoder": (dict,),
    "encoder.prompt": (str,),
    "encoder.pooling": (str,),
    "encoder.max_length": (int,),
}
_FOUND_PARTS_V2 = {
    "index": {"type": (str,), "dim": (int,), "count": (int,), "search_params": (dict,)},
    "sparse": {"count": (int,), "doc_tokens": (int,), "query_tokens": (int,), "space": (str,)},
    "bm25": {"count": (int,)},
}


@dataclass
class Manifest:
    """An index's spec and what its build found; ``to_dict`` is the file's JSON."""

    spec: IndexSpec
    model: dict[str, Any]  # Encoder.describe(): name, weights_sha256, dtype, hidden_size...
    filter: dict[str, Any]  # EmbedFilter.describe(): model_dim, dim, rows...
    documents: dict[str, Any]  # count, next_key, content_sha256, history
    dense: dict[str, Any] | None = None  # metric, dim, count, backend (its description)
    sparse: dict[str, Any] | None = None  # count
    bm25: dict[str, Any] | None = None  # stemmer, stopwords, count
    store: dict[str, Any] | None = None  # the embedding store it was assembled from
    build: dict[str, Any] = field(default_factory=dict)  # created, generation, seconds, bytes
    versions: dict[str, str | None] = field(default_factory=dict)
    # Each file of the generation: its bytes and SHA-256 (retriever.index.integrity).
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    read_version: int = MANIFEST_VERSION  # the version the file was written in
    folder: Path | None = None  # the generation folder it was read from (not saved)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "spec": self.spec.to_dict(),
            "model": self.model,
            "filter": self.filter,
            "dense": self.dense,
            "sparse": self.sparse,
            "bm25": self.bm25,
            "documents": self.documents,
            "store": self.store,
            "versions": self.versions,
            "build": self.build,
            "files": self.files,
        }

    @property
    def count(self) -> int:
        return int(self.documents["count"])

    @property
    def next_key(self) -> int:
        return int(self.documents["next_key"])

    @property
    def content_sha256(self) -> str:
        """The order-free digest of the documents' contents (hex)."""
        return str(self.documents["content_sha256"])

    @property
    def content_digest(self) -> int:
        return int(self.content_sha256, 16)

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.documents.get("history", []))

    @property
    def weights_sha256(self) -> str:
        return str(self.model["weights_sha256"])

    @property
    def model_identity(self) -> dict[str, Any]:
        """Which weights built the index, in the shape a store key and an export use."""
        from retriever.encode.models import IDENTITY_KEYS

        return {key: self.model.get(key) for key in IDENTITY_KEYS}

    @property
    def model_dim(self) -> int:
        """The hidden size the filter projects from."""
        return int(self.filter["model_dim"])

    @property
    def dim(self) -> int:
        """The filtered dimension the dense part stores."""
        return int(self.filter["dim"])

    @property
    def backend(self) -> dict[str, Any] | None:
        """The dense backend's own description (file, codes, collection), or None."""
        return self.dense["backend"] if self.dense else None

    @property
    def seconds(self) -> dict[str, float]:
        return dict(self.build.get("seconds", {}))

    @property
    def part_bytes(self) -> dict[str, int]:
        return dict(self.build.get("bytes", {}))

    @property
    def part_counts(self) -> dict[str, int]:
        found = {"dense": self.dense, "sparse": self.sparse, "bm25": self.bm25}
        return {part: int(entry["count"]) for part, entry in found.items() if entry}

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce the index, and what it holds: the spec, the
        generation, the counts and bytes per part, the model and filter found (what
        `retriever info` prints and the server's /info answers)."""
        sizes = self.part_bytes
        return {
            "generation": self.build.get("generation"),
            "created": self.build.get("created"),
            "documents": self.count,
            "spec": self.spec.to_dict(),
            "parts": {
                part: {"count": count, "bytes": sizes.get(part)}
                for part, count in self.part_counts.items()
            },
            "bytes": sizes,
            "model": self.model,
            "filter": {key: value for key, value in self.filter.items() if key != "rows"},
            "storage": self.backend,
            "manifest_version": self.read_version,
            "versions": self.versions,
        }


def library_versions() -> dict[str, str | None]:
    """Python's version and each of :data:`MANIFEST_PACKAGES`' (None when absent)."""
    versions = {package: installed_version(package) for package in MANIFEST_PACKAGES}
    return {"python": platform.python_version(), **versions}


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the index folder ``folder`` (a generation), checked."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise RetrieverError(
            f"{folder} is not a retriever index (no {MANIFEST_FILE}); build one with "
            "`retriever index DATASET --out DIR`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    manifest = parse_manifest(raw, path)
    manifest.folder = folder
    return manifest


def current_manifest(index: str | Path) -> Manifest:
    """The manifest of the generation the index path ``index`` points to now."""
    from retriever.core.generations import current_generation, not_an_index

    path = Path(index).expanduser().absolute()
    generation = current_generation(path)
    if generation is None:
        if path.is_dir() and not path.is_symlink():  # a generation folder given directly
            return read_manifest(path)
        raise not_an_index(path)
    return read_manifest(generation)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def parse_manifest(raw: Any, path: Path) -> Manifest:
    """A parsed manifest file as a :class:`Manifest`; raises naming the fault."""
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise RetrieverError(f"{path} is not a retriever index manifest")
    written = raw.get("manifest_version")
    if written not in READABLE_VERSIONS:
        raise RetrieverError(
            f"{path.parent} was written with manifest version {written}, this retriever "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: rebuild the index"
        )
    if written == 2:
        _check_shape(raw, path, _SCHEMA_V2, _FOUND_PARTS_V2)
        return _upgraded_v2(raw, path)
    _check_shape(raw, path, _SCHEMA, _FOUND_PARTS)
    try:
        spec = IndexSpec.from_dict(raw["spec"], "spec")
    except (RetrieverError, TypeError) as exc:
        raise RetrieverError(f"{path} is damaged: {exc}; rebuild the index") from None
    manifest = _found(raw, spec, read_version=3)
    _check_parts_agree(manifest, path)
    return manifest


def _found(raw: dict[str, Any], spec: IndexSpec, *, read_version: int) -> Manifest:
    return Manifest(
        spec=spec,
        model=raw["model"],
        filter=raw["filter"],
        documents=raw["documents"],
        dense=raw.get("dense"),
        sparse=raw.get("sparse"),
        bm25=raw.get("bm25"),
        store=raw.get("store"),
        build=raw.get("build") or {},
        versions=raw.get("versions") or {},
        files=raw.get("files") or {},
        read_version=read_version,
    )


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _check_shape(
    raw: dict[str, Any],
    path: Path,
    schema: dict[str, tuple[type, ...]],
    parts: dict[str, dict[str, tuple[type, ...]]],
) -> None:
    checks = dict(schema)
    for part, part_fields in parts.items():
        if raw.get(part) is not None:
            checks[part] = (dict,)
            checks.update({f"{part}.{name}": types for name, types in part_fields.items()})
    for dotted, types in checks.items():
        value = _lookup(raw, dotted)
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise RetrieverError(
                f"{path} is damaged: {dotted!r} should be {expected}, it is {found}; "
                "rebuild the index"
            )
    if not any(raw.get(part) for part in parts):
        raise RetrieverError(f"{path} is damaged: it names no index part; rebuild the index")


def _check_parts_agree(manifest: Manifest, path: Path) -> None:
    """The spec's parts are the parts the build found."""
    found = {part for part in ("dense", "sparse", "bm25") if getattr(manifest, part)}
    if found != set(manifest.spec.parts):
        raise RetrieverError(
            f"{path} is damaged: its spec names the parts {', '.join(manifest.spec.parts)}, "
            f"it holds {', '.join(sorted(found)) or 'none'}; rebuild the index"
        )


def _upgraded_v2(raw: dict[str, Any], path: Path) -> Manifest:
    """A version 2 manifest read as version 3: its spec rebuilt from what it recorded."""
    index = raw.get("index")
    model = raw["model"]
    try:
        spec = IndexSpec(
            model=ModelSpec(
                name=model["name"],
                revision=model.get("revision"),
                dtype=model["dtype"],
                unembedding_from=(model.get("unembedding_from") or {}).get("name"),
            ),
            encoder=EncoderConfig.from_dict(_known(raw["encoder"], EncoderConfig), "encoder"),
            filter=FilterSpec.from_dict(raw["filter"].get("spec", {}), "filter.spec"),
            dense=_dense_spec_v2(index) if index else None,
            sparse=SparseSpec.from_dict(_known(raw["sparse"], SparseSpec), "sparse")
            if raw.get("sparse")
            else None,
            bm25=bool(raw.get("bm25")),
        )
    except (RetrieverError, TypeError) as exc:
        raise RetrieverError(f"{path} is damaged: {exc}; rebuild the index") from None
    found = dict(raw)
    if index:
        found["dense"] = {
            key: value for key, value in index.items() if key not in ("type", "search_params")
        }
        found["dense"].setdefault("backend", {"backend": "faiss"})
    if raw.get("sparse"):
        found["sparse"] = {"count": raw["sparse"]["count"]}
    bytes_found = dict((raw.get("build") or {}).get("bytes") or {})
    if "index" in bytes_found:
        bytes_found["dense"] = bytes_found.pop("index")
    found["build"] = {**(raw.get("build") or {}), "bytes": bytes_found}
    return _found(found, spec, read_version=2)


def _known(entry: dict[str, Any], spec_class: type) -> dict[str, Any]:
    """The entry's keys that are settings of ``spec_class`` (version 2 mixed in others)."""
    names = set(spec_class.__dataclass_fields__)
    return {key: value for key, value in entry.items() if key in names}


def _dense_spec_v2(index: dict[str, Any]) -> DenseSpec:
    """The dense spec a version 2 ``index`` entry implies. Storage is the one recorded,
    unless the index type names its own codes (the record then says what those are)."""
    from retriever.parts.dense.codes import STORAGES, names_own_codes
    from retriever.parts.dense.milvus import MILVUS_LITE_FILE

    described = index.get("backend") or {}
    backend = described.get("backend", "faiss")
    storage = described.get("storage")
    if storage not in STORAGES or (backend == "faiss" and names_own_codes(index["type"])):
        storage = None
    uri = described.get("uri")
    params = index.get("search_params") or {}
    return DenseSpec(
        backend=backend,
        index_type=index["type"],
        storage=storage,
        binary_centre=described.get("binary_centre", "documents"),
        rescore_vectors=described.get("rescore") or "int8",
        milvus_uri=None if uri in (None, MILVUS_LITE_FILE) else uri,
        # The name a user gave (a server generation's own collection is NAME__<gen>).
        collection=described.get("alias") or described.get("collection", DEFAULT_COLLECTION)
        if backend == "milvus"
        else DEFAULT_COLLECTION,
        search=SearchParams(params.get("nprobe"), params.get("efSearch"), params.get("rescore")),
    )


def load_encoder_for(
    manifest: Manifest,
    folder: Path,
    *,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> Any:
    """The encoder that made an index's vectors, its weights' hash checked before loading.

    ``model`` overrides where the model is found (a local copy of the same weights); by
    default the spec's name is used. ``dtype`` defaults to the one the build ran in, so
    queries are encoded like the documents were.
    """
    from retriever.encode.encoder import Encoder

    spec = manifest.spec.model
    return Encoder.load(
        model or spec.name,
        manifest.spec.encoder,
        dtype=dtype or manifest.model["dtype"],
        device=device,
        batch_size=batch_size,
        revision=spec.revision if model is None else None,
        unembedding_from=spec.unembedding_from,
        expected_weights_sha256=manifest.weights_sha256,
        expected_by=str(folder),
    )
