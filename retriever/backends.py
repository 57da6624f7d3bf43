"""Where the dense vectors live: FAISS (the default) or Milvus, behind one interface.

Everything above this module (indexing, searcher, evaluation, benchmark) speaks to a
:class:`DenseBackend`: it adds and removes vectors by document key, searches with
filtered query vectors and returns ``(scores, keys)``, and describes itself for the
manifest. Row numbers, collections and server addresses stay inside.

- ``faiss``: an ``IndexIDMap2`` over any ``faiss.index_factory`` type, saved as
  ``index.faiss`` in the generation folder (GPU when faiss-gpu sees one).
- ``milvus``: a Milvus collection with an INT64 primary key (the document key) and a
  FLOAT_VECTOR field, inner product. The default URI is a Milvus Lite database inside the
  generation folder (``milvus.db``), so it is copied into each new generation like every
  other part. An ``http://host:19530`` URI is a Milvus standalone or cluster: there each
  generation owns one collection, ``NAME__<generation>``, and ``NAME`` is a Milvus alias
  switched to the current one when a generation is published. Readers of an older
  generation keep searching its collection; it is dropped with its generation (see
  :mod:`retriever.generations`), and ``add``/``delete`` copy the current collection
  server-side into a new one, so a change is as atomic there as in a folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError
from retriever.faiss_gpu import GpuSetting, Placed, check_gpu_limits, refuse_a_missing_gpu
from retriever.generations import EXTERNAL_FILE
from retriever.index import (
    INDEX_FILE,
    DenseIndexBuilder,
    load_faiss_index,
    place_for_search,
    remove_keys,
    save_faiss_index,
    search_faiss_index,
    search_parameters_of,
    set_search_parameters,
    training_sample_size,
)

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")
MILVUS_LITE_FILE = "milvus.db"
DEFAULT_COLLECTION = "retriever"
_INSERT_BATCH = 5000
# Milvus's own index names, passed through to a server with its default parameters
# (GPU ones need a GPU Milvus); Milvus Lite builds only FLAT and IVF_FLAT.
MILVUS_SERVER_INDEXES = (
    "AUTOINDEX",
    "HNSW",
    "IVF_FLAT",
    "IVF_SQ8",
    "IVF_PQ",
    "SCANN",
    "DISKANN",
    "GPU_CAGRA",
    "GPU_IVF_FLAT",
    "GPU_IVF_PQ",
    "GPU_BRUTE_FORCE",
)
MILVUS_INSTALL_HINT = "pip install 'retriever[milvus]' (pymilvus and milvus-lite)"


@dataclass(frozen=True)
class BackendSpec:
    """Which backend holds the dense vectors, and its index type."""

    kind: str = "faiss"
    index_type: str = "Flat"
    milvus_uri: str | None = None  # None: Milvus Lite inside the index folder
    collection: str = DEFAULT_COLLECTION
    use_gpu: GpuSetting = None

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise RetrieverError(f"unknown backend {self.kind!r}; choose {', '.join(BACKENDS)}")
        if self.kind == "milvus":
            milvus_index(self.index_type, lite=self.milvus_uri is None)
            # 200, not Milvus's 255: a generation's collection appends ``__<generation>``.
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", self.collection):
                raise RetrieverError(
                    f"--collection {self.collection!r}: letters, digits and _ only, not first "
                    "a digit"
                )


class DenseBackend:
    """The interface; see the module docstring."""

    kind: str
    dim: int

    @property
    def count(self) -> int:
        raise NotImplementedError

    needs_training = False

    def train(self, sample: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def remove(self, keys: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, keys)``, each ``(n, k)``, best first; -1 keys pad short lists."""
        raise NotImplementedError

    def set_search_params(self, params: dict[str, int | None]) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> dict[str, Any]:
        """Write what the folder needs; returns the manifest's description."""
        raise NotImplementedError

    on_gpu = False  # a GPU FAISS index is not thread-safe: callers serialise its searches

    def close(self) -> None:
        return None


class FaissBackend(DenseBackend):
    kind = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        builder: DenseIndexBuilder | None = None,
        index: Any = None,
        use_gpu: GpuSetting = None,
        read_only: bool = False,
    ):
        self.dim = dim
        self._builder = builder
        self._index = index  # the CPU index: what is saved, changed and checked
        self._use_gpu = use_gpu
        self._read_only = read_only
        self._placed: Placed | None = None
        self._nprobe: int | None = None
        self._parameters: set[str] | None = None  # which the index takes, once placed

    @classmethod
    def new(cls, dim: int, spec: BackendSpec) -> FaissBackend:
        builder = DenseIndexBuilder(dim, spec.index_type, use_gpu=spec.use_gpu)
        return cls(dim, builder=builder, use_gpu=spec.use_gpu)

    @classmethod
    def open(cls, folder: Path, *, use_gpu: GpuSetting = None) -> FaissBackend:
        """The index in ``folder`` for searching; it moves to the GPU on the first search,
        after the search parameters are set."""
        refuse_a_missing_gpu(use_gpu)  # now, not at the first search
        index = load_faiss_index(folder)
        return cls(index.d, index=index, use_gpu=use_gpu, read_only=True)

    @property
    def index(self) -> Any:
        if self._index is None:
            self._index = self._builder.finish()
            self._builder = None
        return self._index

    @property
    def needs_training(self) -> bool:  # type: ignore[override]
        return self._builder is not None and self._builder.needs_training

    @property
    def count(self) -> int:
        return int((self._placed.index if self._placed else self.index).ntotal)

    @property
    def placement(self) -> Placed:
        """Where searches run (the index is placed on the first call)."""
        if self._placed is None:
            self._parameters = search_parameters_of(self.index)
            self._placed = place_for_search(self.index, self._use_gpu)
            if self._placed.on_gpu and self._read_only:
                # A searcher never needs the CPU copy again; on a big index it is many GiB.
                self._index = None
        return self._placed

    @property
    def on_gpu(self) -> bool:  # type: ignore[override]
        return self.placement.on_gpu

    def train(self, sample: np.ndarray) -> None:
        self._builder.train(sample)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self._builder is not None:
            self._builder.add(keys, vectors)
        else:
            self._placed = None  # searches must see the change
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys)

    def remove(self, keys: np.ndarray) -> None:
        self._placed = None
        self._index = remove_keys(self.index, keys)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        placed = self.placement
        check_gpu_limits(on_gpu=placed.on_gpu, k=k, nprobe=self._nprobe)
        return search_faiss_index(placed.index, vectors, k)

    def set_search_params(self, params: dict[str, int | None]) -> None:
        if params.get("nprobe") is not None:
            self._nprobe = params["nprobe"]
        if self._index is not None:
            set_search_parameters(self.index, params)  # checks the names against the type
        if self._placed is not None and self._placed.index is not self._index:
            # The GPU copy, a separate object (the CPU index above was checked and set).
            set_search_parameters(
                self._placed.index, params, applicable=self._parameters, on_gpu=True
            )

    def save(self, folder: Path) -> dict[str, Any]:
        save_faiss_index(self.index, folder)
        return {"backend": "faiss", "file": INDEX_FILE}


def milvus_index(index_type: str, *, lite: bool) -> tuple[str, dict[str, int]]:
    """A faiss-style type string as a Milvus index: (type, build params)."""
    if index_type == "Flat":
        return "FLAT", {}
    if match := re.fullmatch(r"IVF(\d+),Flat", index_type):
        return "IVF_FLAT", {"nlist": int(match[1])}
    if not lite:
        if index_type in MILVUS_SERVER_INDEXES:
            return index_type, {}  # the server's own defaults
        if match := re.fullmatch(r"HNSW(\d+)", index_type):
            return "HNSW", {"M": int(match[1]), "efConstruction": 200}
        if match := re.fullmatch(r"IVF(\d+),PQ(\d+)", index_type):
            return "IVF_PQ", {"nlist": int(match[1]), "m": int(match[2]), "nbits": 8}
    offered = "Flat, IVFn,Flat" + (
        ""
        if lite
        else ", HNSWm, IVFn,PQm, or a Milvus index name: " + ", ".join(MILVUS_SERVER_INDEXES)
    )
    raise RetrieverError(
        f"--index-type {index_type} has no Milvus{' Lite' if lite else ''} equivalent here; "
        f"use one of {offered}"
    )


def _milvus_client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise RetrieverError(f"--backend milvus needs pymilvus: {MILVUS_INSTALL_HINT}") from None
    try:
        return MilvusClient(uri)
    except Exception as exc:  # pymilvus raises its own types, per version
        hint = (
            " (Milvus Lite serves one process at a time: close the other searcher, or serve "
            "from a Milvus standalone with --milvus-uri)"
            if not uri.startswith(("http://", "https://", "tcp://"))
            else ""
        )
        raise RetrieverError(f"cannot open Milvus at {uri}: {exc}{hint}") from None


class MilvusBackend(DenseBackend):
    kind = "milvus"

    def __init__(
        self,
        client: Any,
        collection: str,
        dim: int,
        description: dict[str, Any],
        lite_path: str | None,
    ):
        self.client = client
        self.lite_path = lite_path
        self.collection = collection
        self.dim = dim
        self.description = description
        self._search_params: dict[str, int] = {}

    @classmethod
    def new(cls, dim: int, spec: BackendSpec, folder: Path) -> MilvusBackend:
        index_type, params = milvus_index(spec.index_type, lite=spec.milvus_uri is None)
        if spec.milvus_uri is None:
            uri = str(folder / MILVUS_LITE_FILE)
            client = _milvus_client(uri)
            if client.has_collection(spec.collection):
                client.drop_collection(spec.collection)
            collection = spec.collection
        else:
            uri = spec.milvus_uri
            client = _milvus_client(uri)
            _check_alias_is_ours(client, uri, spec.collection, folder)
            collection = _generation_collection(spec.collection, folder)
            _record_external(folder, uri, collection, spec.collection)
        _create_collection(client, collection, dim, index_type, params)
        description = {
            "backend": "milvus",
            "uri": MILVUS_LITE_FILE if spec.milvus_uri is None else spec.milvus_uri,
            "collection": collection,
            "milvus_index": index_type,
        }
        if spec.milvus_uri is not None:
            description["alias"] = spec.collection
        return cls(client, collection, dim, description, uri if spec.milvus_uri is None else None)

    @classmethod
    def open(cls, folder: Path, description: dict[str, Any], dim: int) -> MilvusBackend:
        uri = description["uri"]
        lite = uri == MILVUS_LITE_FILE
        if lite:
            uri = str(folder / MILVUS_LITE_FILE)
        client = _milvus_client(uri)
        if not client.has_collection(description["collection"]):
            raise RetrieverError(
                f"Milvus at {uri} has no collection {description['collection']!r}: the index "
                "is inconsistent; rebuild it"
            )
        client.load_collection(description["collection"])
        return cls(client, description["collection"], dim, dict(description), uri if lite else None)

    @classmethod
    def copy(cls, base: Path, staging: Path, index: dict[str, Any]) -> MilvusBackend:
        """A writable copy of a generation's vectors for the generation in ``staging``."""
        description = index["backend"]
        dim = int(index["dim"])
        if description["uri"] == MILVUS_LITE_FILE:
            shutil.copytree(base / MILVUS_LITE_FILE, staging / MILVUS_LITE_FILE)
            return cls.open(staging, description, dim)
        uri = description["uri"]
        alias = description.get("alias", description["collection"])
        client = _milvus_client(uri)
        collection = _generation_collection(alias, staging)
        _record_external(staging, uri, collection, alias)
        index_type, params = milvus_index(index["type"], lite=False)
        _create_collection(client, collection, dim, index_type, params)
        copy = cls(client, collection, dim, {**description, "collection": collection}, None)
        # Copied through this process, a batch at a time: Milvus has no server-side copy.
        client.load_collection(description["collection"])
        rows = client.query_iterator(
            description["collection"],
            batch_size=_INSERT_BATCH,
            filter="key >= 0",
            output_fields=["key", "vector"],
        )
        try:
            while batch := rows.next():
                copy.client.insert(collection, batch)
        finally:
            rows.close()
        return copy

    @property
    def count(self) -> int:
        self.client.flush(self.collection)
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        for lo in range(0, len(keys), _INSERT_BATCH):
            rows = [
                {"key": int(key), "vector": vector.tolist()}
                for key, vector in zip(
                    keys[lo : lo + _INSERT_BATCH], vectors[lo : lo + _INSERT_BATCH], strict=True
                )
            ]
            self.client.insert(self.collection, rows)

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.client.delete(self.collection, ids=[int(k) for k in keys])

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.client.search(
            self.collection,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=k,
            output_fields=["key"],
            search_params={"metric_type": "IP", "params": dict(self._search_params)},
        )
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        keys = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, hits in enumerate(found):
            for column, hit in enumerate(hits[:k]):
                scores[row, column] = hit["distance"]
                keys[row, column] = hit["key"] if "key" in hit else hit["entity"]["key"]
        return scores, keys

    def set_search_params(self, params: dict[str, int | None]) -> None:
        for name, value in params.items():
            if value is None:
                continue
            if value < 1:
                raise RetrieverError(f"{name} must be at least 1, got {value}")
            milvus_name = {"nprobe": "nprobe", "efSearch": "ef"}[name]
            self._search_params[milvus_name] = int(value)

    def save(self, folder: Path) -> dict[str, Any]:
        self.client.flush(self.collection)
        self.close()
        return dict(self.description)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.lite_path is not None:
            # Milvus Lite serves a database from a thread of this process that holds an
            # exclusive lock on it: stop it, or the folder stays locked after a rename.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.lite_path)
            self.lite_path = None


def new_backend(spec: BackendSpec, dim: int, folder: Path) -> DenseBackend:
    """An empty backend for a new generation being written in ``folder``."""
    if spec.kind == "milvus":
        return MilvusBackend.new(dim, spec, folder)
    return FaissBackend.new(dim, spec)


def build_in_memory(spec: BackendSpec, vectors: np.ndarray, folder: Path) -> DenseBackend:
    """A backend over vectors held in memory, keys ``0..n-1`` (benchmarks), trained on a
    sample as a streamed build would be."""
    backend = new_backend(spec, vectors.shape[1], folder)
    if backend.needs_training:
        size = training_size(spec, vectors.shape[1], len(vectors))
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        backend.train(vectors[rows])
    backend.add(np.arange(len(vectors)), vectors)
    return backend


def open_backend(
    folder: Path, index: dict[str, Any], *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """The backend a manifest's ``index`` entry describes, read from ``folder``."""
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        return MilvusBackend.open(folder, description, int(index["dim"]))
    return FaissBackend.open(folder, use_gpu=use_gpu)


def writable_copy(
    base: Path, staging: Path, index: dict[str, Any], *, use_gpu: GpuSetting = None
) -> DenseBackend:
    """The base generation's backend, to change and save into ``staging``."""
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        return MilvusBackend.copy(base, staging, index)
    return FaissBackend.open(base, use_gpu=False if use_gpu is None else use_gpu)


def training_size(spec: BackendSpec, dim: int, count: int) -> int:
    """Vectors the backend trains on (Milvus trains inside the server: none here)."""
    return training_sample_size(spec.index_type, dim, count) if spec.kind == "faiss" else 0


def backend_bytes(folder: Path, index: dict[str, Any] | None) -> int | None:
    """Bytes of the dense part in ``folder`` (None when it lives on a server)."""
    from retriever.manifest import folder_bytes

    if not index:
        return None
    description = index.get("backend") or {"backend": "faiss"}
    if description.get("backend") == "milvus":
        path = folder / MILVUS_LITE_FILE
        return folder_bytes(path) if description["uri"] == MILVUS_LITE_FILE else None
    return folder_bytes(folder / INDEX_FILE)


def _create_collection(
    client: Any, name: str, dim: int, index_type: str, params: dict[str, int]
) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type=index_type, metric_type="IP", params=params)
    client.create_collection(name, schema=schema, index_params=index_params)


def _generation_collection(alias: str, folder: Path) -> str:
    generation = folder.name.removesuffix(".partial").replace("-", "_")
    return f"{alias}__{generation}"


def _record_external(folder: Path, uri: str, collection: str, alias: str) -> None:
    record = {"backend": "milvus", "uri": uri, "collection": collection, "alias": alias}
    (folder / EXTERNAL_FILE).write_text(json.dumps(record) + "\n")


def _aliases(client: Any) -> list[str]:
    found = client.list_aliases()
    return list(found.get("aliases", []) if isinstance(found, dict) else found)


def _check_alias_is_ours(client: Any, uri: str, alias: str, folder: Path) -> None:
    """Refuse a ``--collection`` name that another index or another program uses."""
    if alias in _aliases(client):
        target = client.describe_alias(alias)["collection_name"]
        ours = {
            json.loads(path.read_text())["collection"]
            for path in folder.parent.glob(f"*/{EXTERNAL_FILE}")
        }
        if target not in ours:
            raise RetrieverError(
                f"Milvus at {uri} already has a collection {alias!r} that another index "
                "uses: choose another --collection"
            )
    elif client.has_collection(alias):
        raise RetrieverError(
            f"Milvus at {uri} already has a collection {alias!r} not made by retriever: "
            "choose another --collection, or drop it"
        )


def publish_external(record_path: Path) -> None:
    """Point a published generation's alias at its collection."""
    with _server_record(record_path, "pointing the alias at") as (client, alias, collection):
        if alias in _aliases(client):
            client.alter_alias(collection, alias)
        else:
            client.create_alias(collection, alias)


def drop_external(record_path: Path) -> None:
    """Drop the server collection of a generation being removed."""
    with _server_record(record_path, "dropping") as (client, alias, collection):
        if alias in _aliases(client) and client.describe_alias(alias)["collection_name"] == (
            collection
        ):
            client.drop_alias(alias)  # the index at this path no longer uses Milvus
        if client.has_collection(collection):
            client.drop_collection(collection)


@contextlib.contextmanager
def _server_record(record_path: Path, doing: str) -> Iterator[tuple[Any, str, str]]:
    """``(client, alias, collection)`` of a generation's ``EXTERNAL`` record; any failure
    on the server is one ``RetrieverError`` naming what was being done."""
    record = json.loads(record_path.read_text())
    alias, collection = record["alias"], record["collection"]
    try:
        client = _milvus_client(record["uri"])
        try:
            yield client, alias, collection
        finally:
            client.close()
    except Exception as exc:  # pymilvus raises its own types, per version
        raise RetrieverError(
            f"{doing} the Milvus collection {collection!r} (alias {alias!r}) at "
            f"{record['uri']} failed: {exc}"
        ) from None
