"""Milvus as the dense backend: a collection with an INT64 primary key (the document key)
and a vector field, behind :class:`retriever.parts.dense.backends.DenseBackend`.

``--storage`` picks the field and its index (:func:`milvus_index`): float32 is a
FLOAT_VECTOR searched by inner product; int8 the same field under Milvus's 8-bit scalar
quantizer (IVF_SQ8, or HNSW_SQ on a server); binary a BINARY_VECTOR of the signs searched
by Hamming distance (a server only: Milvus Lite has no binary field). float16 is refused:
Milvus Lite has no FLOAT16_VECTOR field.

The default URI is a Milvus Lite database inside the generation folder (``milvus.db``),
so it is copied into each new generation like every other part. An
``http://host:19530`` URI is a Milvus standalone or cluster: there each generation owns
one collection, ``NAME__<generation>``, and ``NAME`` is a Milvus alias switched to the
current one when a generation is published. Readers of an older generation keep
searching its collection; it is dropped with its generation, and ``add``/``delete`` copy
the current collection into a new one, so a change is as atomic there as in a folder.

A server collection lives outside the generation folder: the generation names it in its
``EXTERNAL`` record, and :data:`SERVER_COLLECTIONS` tells the generation lifecycle
(:mod:`retriever.core.generations`) how to publish and drop it.

``pymilvus`` is an optional extra: it is imported only when Milvus is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.config import DEFAULT_STORAGE, STORAGES
from retriever.core.errors import RetrieverError
from retriever.core.generations import EXTERNAL_FILE, ExternalParts
from retriever.core.spec import DenseSpec, SearchParams
from retriever.parts.dense.codes import BinaryCodes, binary_bits

logger = logging.getLogger(__name__)

MILVUS_LITE_FILE = "milvus.db"
# efConstruction of a Milvus HNSW index when --ef-construction is not given.
MILVUS_EF_CONSTRUCTION = 200
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
# Flat, HNSWm and IVFn (``,Flat`` optional), as retriever.parts.dense.codes.layout_of reads them.
_STRUCTURE = re.compile(r"(?P<kind>Flat|HNSW|IVF)(?P<size>\d*)(?:,Flat)?")


def check_collection_name(collection: str) -> None:
    # 200, not Milvus's 255: a generation's collection appends ``__<generation>``.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", collection):
        raise RetrieverError(
            f"--collection {collection!r}: letters, digits and _ only, not first a digit"
        )


def milvus_index(
    index_type: str,
    *,
    lite: bool,
    storage: str | None = None,
    ef_construction: int | None = None,
) -> tuple[str, dict[str, int | str]]:
    """A faiss-style type string holding ``storage`` codes (None: float32) as a Milvus
    index: (type, build params), with ``ef_construction`` for an HNSW one. Refuses, in
    one line, what Milvus (Lite) cannot hold."""
    milvus_type, params = _milvus_codes(index_type, lite=lite, storage=storage)
    if ef_construction is None:
        return milvus_type, params
    if "efConstruction" not in params:
        raise RetrieverError(
            f"--ef-construction applies to HNSW indexes; Milvus builds --index-type "
            f"{index_type} as {milvus_type}"
        )
    return milvus_type, {**params, "efConstruction": ef_construction}


def _milvus_codes(
    index_type: str, *, lite: bool, storage: str | None
) -> tuple[str, dict[str, int | str]]:
    if storage not in (None, *STORAGES):
        raise RetrieverError(f"unknown --storage {storage!r}; choose {', '.join(STORAGES)}")
    if storage in (None, "float32"):
        return _float_index(index_type, lite=lite)
    if storage == "rabitq":
        raise RetrieverError(
            "--storage rabitq has no Milvus mapping here (Milvus Lite has no RaBitQ index; "
            "IVF_RABITQ of Milvus 2.6 servers is not wired): use --backend faiss"
        )
    match = _STRUCTURE.fullmatch(index_type)
    if match is None or (match["kind"] == "IVF" and not match["size"]):
        raise RetrieverError(
            f"--storage {storage} applies to --index-type Flat, HNSWm or IVFn; "
            f"{index_type!r} names its own codes"
        )
    kind, size = match["kind"], int(match["size"] or 32)  # HNSW alone: M=32, as FAISS
    if storage == "float16":
        raise RetrieverError(
            "--storage float16 has no Milvus mapping (Milvus Lite has no FLOAT16_VECTOR "
            "field): use --storage float32 or int8 with Milvus, or --backend faiss"
        )
    if storage == "int8":
        if kind == "Flat":
            # One cell: every vector is scanned, as in FAISS's flat SQ8 index.
            return "IVF_SQ8", {"nlist": 1}
        if kind == "IVF":
            return "IVF_SQ8", {"nlist": size}
        if not lite:
            return "HNSW_SQ", {
                "M": size,
                "efConstruction": MILVUS_EF_CONSTRUCTION,
                "sq_type": "SQ8",
            }
        raise RetrieverError(
            f"--index-type {index_type} with --storage int8 has no Milvus Lite equivalent "
            "here; use --index-type IVFn (IVF_SQ8) or Flat"
        )
    if lite:
        raise RetrieverError(
            "--storage binary needs a BINARY_VECTOR field, which Milvus Lite lacks: serve "
            "from a Milvus server (--milvus-uri) or use --backend faiss"
        )
    if kind == "HNSW":
        raise RetrieverError(
            f"--index-type {index_type} with --storage binary has no Milvus equivalent "
            "(BIN_FLAT, BIN_IVF_FLAT only): use --index-type Flat or IVFn"
        )
    return ("BIN_FLAT", {}) if kind == "Flat" else ("BIN_IVF_FLAT", {"nlist": size})


def _float_index(index_type: str, *, lite: bool) -> tuple[str, dict[str, int | str]]:
    if index_type == "Flat":
        return "FLAT", {}
    if match := re.fullmatch(r"IVF(\d+)(?:,Flat)?", index_type):  # IVFn as layout_of reads it
        return "IVF_FLAT", {"nlist": int(match[1])}
    if not lite:
        if index_type in MILVUS_SERVER_INDEXES:
            return index_type, {}  # the server's own defaults
        if match := re.fullmatch(r"HNSW(\d+)", index_type):
            return "HNSW", {"M": int(match[1]), "efConstruction": MILVUS_EF_CONSTRUCTION}
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


class MilvusBackend:
    """A :class:`retriever.parts.dense.backends.DenseBackend` on a Milvus collection.

    Callers hand it float filtered vectors whatever the storage. With binary storage it
    packs them into bits itself (``x > 0``: the zero centre, since Milvus trains nothing
    here and a documents' mean would need a training pass; the manifest records
    ``binary_centre: zero``) and turns Hamming distances back into similarities in
    [-1, 1], ``1 - 2 h / dim``, as the FAISS backend does.
    """

    kind = "milvus"
    needs_training = False  # Milvus trains its index inside the server
    on_gpu = False

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
        self.storage = description.get("storage", DEFAULT_STORAGE)  # older manifests: float32
        self._binary = BinaryCodes(np.zeros(dim), "zero") if self.storage == "binary" else None
        self._search_params: dict[str, int] = {}

    @classmethod
    def new(cls, dim: int, folder: Path, spec: DenseSpec) -> MilvusBackend:
        """An empty collection for the generation in ``folder``: in Milvus Lite inside it
        (``spec.milvus_uri`` None), or the generation's own collection on that server."""
        uri, collection = spec.milvus_uri, spec.collection
        storage = spec.storage or DEFAULT_STORAGE
        milvus_type, params = milvus_index(
            spec.index_type, lite=uri is None, storage=storage, ef_construction=spec.ef_construction
        )
        if uri is None:
            lite_path = str(folder / MILVUS_LITE_FILE)
            client = _milvus_client(lite_path)
            if client.has_collection(collection):
                client.drop_collection(collection)
            name = collection
        else:
            lite_path = None
            client = _milvus_client(uri)
            _check_alias_is_ours(client, uri, collection, folder)
            name = _generation_collection(collection, folder)
            _record_external(folder, uri, name, collection)
        _create_collection(client, name, dim, milvus_type, params, storage)
        description = {
            "backend": "milvus",
            "uri": MILVUS_LITE_FILE if uri is None else uri,
            "collection": name,
            "milvus_index": milvus_type,
            "milvus_params": params,
            "storage": storage,
        }
        if storage == "binary":
            description["binary_centre"] = "zero"
        if uri is not None:
            description["alias"] = collection
        return cls(client, name, dim, description, lite_path)

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
    def copy(
        cls, base: Path, staging: Path, spec: DenseSpec, description: dict[str, Any], dim: int
    ) -> MilvusBackend:
        """A writable copy of a generation's vectors (``description`` of ``spec``) for the
        generation in ``staging``."""
        if description["uri"] == MILVUS_LITE_FILE:
            shutil.copytree(base / MILVUS_LITE_FILE, staging / MILVUS_LITE_FILE)
            return cls.open(staging, description, dim)
        uri = description["uri"]
        alias = description.get("alias", description["collection"])
        client = _milvus_client(uri)
        collection = _generation_collection(alias, staging)
        _record_external(staging, uri, collection, alias)
        storage = description.get("storage", DEFAULT_STORAGE)
        index_type, params = milvus_index(
            spec.index_type, lite=False, storage=storage, ef_construction=spec.ef_construction
        )
        _create_collection(client, collection, dim, index_type, params, storage)
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
                if storage == "binary":  # queries return a binary vector as [bytes]
                    batch = [{**row, "vector": _packed(row["vector"])} for row in batch]
                copy.client.insert(collection, batch)
        finally:
            rows.close()
        return copy

    def train(self, sample: np.ndarray) -> None:
        raise NotImplementedError("Milvus trains its index inside the server")

    @property
    def count(self) -> int:
        self.client.flush(self.collection)
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        for lo in range(0, len(keys), _INSERT_BATCH):
            rows = [
                {"key": int(key), "vector": vector}
                for key, vector in zip(
                    keys[lo : lo + _INSERT_BATCH],
                    self._field_values(vectors[lo : lo + _INSERT_BATCH]),
                    strict=True,
                )
            ]
            self.client.insert(self.collection, rows)

    def _field_values(self, vectors: np.ndarray) -> list[Any]:
        """Float vectors as the vector field takes them: lists of floats, or packed bits
        (one ``bytes`` per row) for a binary field."""
        if self._binary is None:
            return np.asarray(vectors, dtype=np.float32).tolist()
        return [row.tobytes() for row in self._binary.encode(vectors)]

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.client.delete(self.collection, ids=[int(k) for k in keys])

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.client.search(
            self.collection,
            data=self._field_values(vectors),
            limit=k,
            output_fields=["key"],
            search_params={
                "metric_type": _metric(self.storage),
                "params": dict(self._search_params),
            },
        )
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        keys = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, hits in enumerate(found):
            hits = hits[:k]
            distances = np.array([hit["distance"] for hit in hits], dtype=np.float32)
            if self._binary is not None:  # Hamming distances: higher similarity is better
                distances = self._binary.similarity(distances)
            scores[row, : len(hits)] = distances
            for column, hit in enumerate(hits):
                keys[row, column] = hit["key"] if "key" in hit else hit["entity"]["key"]
        return scores, keys

    def set_search_params(self, params: dict[str, int | None]) -> None:
        SearchParams.from_faiss(params)
        for name, value in params.items():
            if value is None:
                continue
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


def _metric(storage: str) -> str:
    return "HAMMING" if storage == "binary" else "IP"


def _packed(value: Any) -> bytes:
    """A binary vector as a query returns it (``bytes``, or ``[bytes]`` in pymilvus's rows)
    as an insert takes it."""
    if isinstance(value, list) and all(isinstance(part, bytes | bytearray) for part in value):
        return b"".join(value)
    return bytes(value)


def _create_collection(
    client: Any,
    name: str,
    dim: int,
    index_type: str,
    params: dict[str, int | str],
    storage: str = "float32",
) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.INT64, is_primary=True)
    if storage == "binary":  # one bit per dimension, padded with zero bits to whole bytes
        schema.add_field("vector", DataType.BINARY_VECTOR, dim=binary_bits(dim))
    else:
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index_params = client.prepare_index_params()
    # Build parameters go as one "params" JSON entry, the wire form Milvus servers have
    # always read: pymilvus 3 otherwise sends each as its own entry, and Milvus Lite 3
    # ignores those (an IVF index silently got its default nlist).
    index_params.add_index(
        "vector",
        index_type=index_type,
        metric_type=_metric(storage),
        params={"params": params} if params else {},
    )
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


# How the generation lifecycle publishes and drops the collections above.
SERVER_COLLECTIONS = ExternalParts(publish=publish_external, drop=drop_external)
