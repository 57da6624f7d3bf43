"""Milvus (Lite) as the dense backend: the same answers as FAISS, add and delete too."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec
from retriever.index.options import BuildOptions
from tests.conftest import synthetic_docs, write_jsonl

pytest.importorskip(
    "pymilvus", reason="Milvus is an optional extra: pip install 'retriever[milvus]'"
)

QUERIES = [doc["text"] for doc in synthetic_docs(30, seed=7)]


def _build(model: Path, corpus: Path, out: Path, *, overwrite: bool = False, **dense) -> Path:
    """An index of ``corpus`` whose dense part is ``DenseSpec(**dense)``."""
    spec = IndexSpec(
        model=ModelSpec(name=str(model), dtype="float32"),
        encoder=EncoderConfig(max_length=64),
        dense=DenseSpec(**dense),
    )
    return build_index(corpus, out, spec, BuildOptions(overwrite=overwrite))


@pytest.fixture(scope="module")
def pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("milvus")
    corpus = write_jsonl(root / "docs.jsonl", synthetic_docs(200, seed=5))
    return {
        "faiss": _build(tiny_model, corpus, root / "faiss"),
        "milvus": _build(tiny_model, corpus, root / "milvus", backend="milvus"),
    }


def test_milvus_flat_answers_like_faiss_flat(pair: dict[str, Path]) -> None:
    faiss_run = Searcher.load(pair["faiss"]).batch_search(QUERIES, k=10).to_beir()
    milvus = Searcher.load(pair["milvus"])
    milvus_run = milvus.batch_search(QUERIES, k=10).to_beir()
    overlap = [len(set(faiss_run[q]) & set(milvus_run[q])) / 10 for q in faiss_run]
    assert sum(overlap) / len(overlap) >= 0.99
    for q in faiss_run:
        for doc_id in set(faiss_run[q]) & set(milvus_run[q]):
            assert milvus_run[q][doc_id] == pytest.approx(faiss_run[q][doc_id], abs=1e-5)
    manifest = json.loads((pair["milvus"] / "manifest.json").read_text())
    assert manifest["dense"]["backend"] == {
        "backend": "milvus",
        "uri": "milvus.db",
        "collection": "retriever",
        "milvus_index": "FLAT",
        "milvus_params": {},
        "storage": "float32",
    }
    assert (pair["milvus"] / "milvus.db").is_dir() and not (pair["milvus"] / "index.faiss").exists()
    milvus.close()


def test_add_and_delete_on_milvus(tiny_model: Path, tmp_path: Path) -> None:
    index = _build(
        tiny_model,
        write_jsonl(tmp_path / "a.jsonl", synthetic_docs(20)),
        tmp_path / "m",
        backend="milvus",
    )
    extra = write_jsonl(tmp_path / "b.jsonl", synthetic_docs(5, seed=9, prefix="b"))
    assert main(["add", str(index), str(extra)]) == 0
    assert main(["delete", str(index), "s3", "b1"]) == 0
    searcher = Searcher.load(index)
    assert len(searcher) == 23
    run = searcher.batch_search(QUERIES, k=23).to_beir()
    assert all(not {"s3", "b1"} & set(found) for found in run.values())
    assert (
        searcher.search(
            synthetic_docs(5, seed=9, prefix="b")[2]["title"]
            + " "
            + synthetic_docs(5, seed=9, prefix="b")[2]["text"],
            k=1,
        )[0].id
        == "b2"
    )
    searcher.close()


def test_index_types_milvus_lite_lacks_are_refused(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(RetrieverError, match="HNSW32 has no Milvus Lite equivalent"):
        _build(tiny_model, toy_corpus, tmp_path / "x", backend="milvus", index_type="HNSW32")


def test_index_types_map_to_milvus_server_indexes() -> None:
    from retriever.parts.dense.milvus import milvus_index

    assert milvus_index("HNSW32", lite=False) == ("HNSW", {"M": 32, "efConstruction": 200})
    assert milvus_index("IVF1024,PQ36", lite=False) == (
        "IVF_PQ",
        {"nlist": 1024, "m": 36, "nbits": 8},
    )
    assert milvus_index("GPU_CAGRA", lite=False) == ("GPU_CAGRA", {})
    with pytest.raises(RetrieverError, match="GPU_CAGRA has no Milvus Lite equivalent"):
        milvus_index("GPU_CAGRA", lite=True)
    with pytest.raises(RetrieverError, match="or a Milvus index name: AUTOINDEX"):
        milvus_index("LSH", lite=False)


# -- a Milvus server: Milvus Lite's own gRPC server in another process, reached by URI as
# a standalone would be (Lite offers FLAT and IVF_FLAT; the protocol is the same).


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus-server")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_it_answers(server, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


# Milvus Lite's server answers within a few seconds on an idle 2-core machine; ten times
# that and more leaves room for a machine busy with other work. Only a server that never
# answers fails, and the message says so.
SERVER_START_SECONDS = 300


def _wait_until_it_answers(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        code = server.poll()
        assert code is None, f"the Milvus Lite server exited with code {code} before answering"
        assert time.monotonic() < deadline, (
            f"the Milvus Lite server did not answer on port {port} in {SERVER_START_SECONDS} s"
        )
        time.sleep(0.2)


def _serve(model: Path, corpus: Path, out: Path, uri: str, collection: str, **kwargs) -> Path:
    return _build(
        model, corpus, out, backend="milvus", milvus_uri=uri, collection=collection, **kwargs
    )


def _collection(index: Path) -> str:
    """The server collection the index's current generation reads."""
    return json.loads((index / "manifest.json").read_text())["dense"]["backend"]["collection"]


def _server_state(uri: str, alias: str) -> tuple[str | None, list[str]]:
    """(the collection ``alias`` names, the collections of that alias's generations)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        aliases = client.list_aliases().get("aliases", [])
        target = client.describe_alias(alias)["collection_name"] if alias in aliases else None
        owned = sorted(c for c in client.list_collections() if c.startswith(f"{alias}__"))
        return target, owned
    finally:
        client.close()


def test_a_server_collection_answers_like_faiss_and_changes_by_generation(
    tiny_model: Path, pair: dict[str, Path], milvus_server: str, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(200, seed=5))
    index = _serve(tiny_model, corpus, tmp_path / "served", milvus_server, "served")
    described = json.loads((index / "manifest.json").read_text())["dense"]["backend"]
    first = described["collection"]
    assert described["alias"] == "served" and first.startswith("served__")
    assert described["uri"] == milvus_server
    assert _server_state(milvus_server, "served") == (first, [first])
    assert not (index / "milvus.db").exists()

    faiss_run = Searcher.load(pair["faiss"]).batch_search(QUERIES, k=10).to_beir()
    reader = Searcher.load(index)  # holds the first generation across the changes below
    served_run = reader.batch_search(QUERIES, k=10).to_beir()
    overlap = [len(set(faiss_run[q]) & set(served_run[q])) / 10 for q in faiss_run]
    assert sum(overlap) / len(overlap) >= 0.99

    extra = write_jsonl(tmp_path / "b.jsonl", synthetic_docs(5, seed=9, prefix="b"))
    assert main(["add", str(index), str(extra)]) == 0
    second = _collection(index)
    target, owned = _server_state(milvus_server, "served")
    assert target == second and owned == sorted([first, second])  # the reader keeps `first`
    assert reader.batch_search(QUERIES, k=10).to_beir() == served_run
    reader.close()

    assert main(["delete", str(index), "s3", "b1"]) == 0
    third = _collection(index)
    # Nobody reads the first two generations now: their collections went with them.
    assert _server_state(milvus_server, "served") == (third, [third])
    searcher = Searcher.load(index)
    assert len(searcher) == 203
    found = searcher.batch_search(QUERIES, k=203).to_beir()
    assert all(not {"s3", "b1"} & set(hits) for hits in found.values())
    searcher.close()

    # Another index may not take the name; a rebuild of this one may, and a FAISS rebuild
    # of this path lets go of the server's collections.
    with pytest.raises(RetrieverError, match="another index uses"):
        _serve(tiny_model, extra, tmp_path / "other", milvus_server, "served")
    _serve(tiny_model, extra, index, milvus_server, "served", overwrite=True)
    fourth = _collection(index)
    assert _server_state(milvus_server, "served") == (fourth, [fourth])
    _build(tiny_model, extra, index, overwrite=True)
    assert _server_state(milvus_server, "served") == (None, [])


def test_a_failed_build_leaves_no_collection_on_the_server(
    tiny_model: Path, milvus_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.index import build as indexing

    def fail(*args: object, **kwargs: object) -> None:
        raise RetrieverError("injected failure after the collection was filled")

    monkeypatch.setattr(indexing, "publish_manifest", fail)
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(20))
    with pytest.raises(RetrieverError, match="injected"):
        _serve(tiny_model, corpus, tmp_path / "x", milvus_server, "failed")
    assert _server_state(milvus_server, "failed") == (None, [])
    assert not (tmp_path / "x").exists()


def test_a_collection_made_by_someone_else_is_refused(
    tiny_model: Path, toy_corpus: Path, milvus_server: str, tmp_path: Path
) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(milvus_server)
    client.create_collection("theirs", dimension=8)
    client.close()
    with pytest.raises(RetrieverError, match="'theirs' not made by retriever"):
        _serve(tiny_model, toy_corpus, tmp_path / "x", milvus_server, "theirs")


# -- --storage: each storage builds in Milvus and answers like brute force on what it
# stores, or is refused in one line before any collection is made.


def _vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _one_line_refusal(call: Callable[[], object], match: str) -> None:
    with pytest.raises(RetrieverError, match=match) as refused:
        call()
    assert "\n" not in str(refused.value)


def test_storages_map_to_milvus_indexes() -> None:
    from retriever.parts.dense.milvus import milvus_index

    assert milvus_index("Flat", lite=True, storage="float32") == ("FLAT", {})
    assert milvus_index("IVF64", lite=True) == ("IVF_FLAT", {"nlist": 64})
    assert milvus_index("Flat", lite=True, storage="int8") == ("IVF_SQ8", {"nlist": 1})
    assert milvus_index("IVF64", lite=True, storage="int8") == ("IVF_SQ8", {"nlist": 64})
    assert milvus_index("IVF64,Flat", lite=False, storage="int8") == ("IVF_SQ8", {"nlist": 64})
    assert milvus_index("HNSW16", lite=False, storage="int8") == (
        "HNSW_SQ",
        {"M": 16, "efConstruction": 200, "sq_type": "SQ8"},
    )
    assert milvus_index("Flat", lite=False, storage="binary") == ("BIN_FLAT", {})
    assert milvus_index("IVF64", lite=False, storage="binary") == ("BIN_IVF_FLAT", {"nlist": 64})


@pytest.mark.parametrize(
    ("index_type", "lite", "storage", "match"),
    [
        ("Flat", True, "float16", "float16 has no Milvus mapping"),
        ("IVF64", False, "float16", "float16 has no Milvus mapping"),
        ("HNSW32", True, "int8", "no Milvus Lite equivalent here; use --index-type IVFn"),
        ("Flat", True, "binary", "Milvus Lite lacks: serve from a Milvus server"),
        ("HNSW32", False, "binary", "use --index-type Flat or IVFn"),
        ("IVF64,PQ8", False, "int8", "'IVF64,PQ8' names its own codes"),
        ("Flat", True, "int4", "unknown --storage 'int4'"),
    ],
)
def test_storages_milvus_cannot_hold_are_refused_in_one_line(
    index_type: str, lite: bool, storage: str, match: str
) -> None:
    from retriever.parts.dense.backends import check_dense_spec

    uri = None if lite else "http://127.0.0.1:1"  # refused before any connection
    _one_line_refusal(
        lambda: check_dense_spec(
            DenseSpec("milvus", index_type, milvus_uri=uri, storage=storage, binary_centre="zero")
        ),
        match,
    )


@pytest.mark.parametrize(("index_type", "nlist"), [("Flat", 1), ("IVF8", 8)])
def test_int8_storage_in_milvus_lite_searches_like_brute_force(
    index_type: str, nlist: int, tmp_path: Path
) -> None:
    from retriever.parts.dense.milvus import MilvusBackend

    dim, keys = 32, np.arange(1000, 1600)
    documents, queries = _vectors(len(keys), dim, seed=1), _vectors(20, dim, seed=2)
    backend = MilvusBackend.new(
        dim,
        tmp_path,
        DenseSpec(
            backend="milvus", index_type=index_type, milvus_uri=None, collection="c", storage="int8"
        ),
    )
    backend.add(keys, documents)
    description = backend.save(tmp_path)
    assert description["storage"] == "int8" and description["milvus_index"] == "IVF_SQ8"

    reopened = MilvusBackend.open(tmp_path, description, dim)
    assert reopened.storage == "int8"
    built = reopened.client.describe_index("c", "vector")
    assert built["index_type"] == "IVF_SQ8" and int(built["params"]["nlist"]) == nlist
    reopened.set_search_params({"nprobe": nlist})  # every cell: only quantization differs
    scores, found = reopened.search(queries, 10)
    reopened.close()

    exact = queries @ documents.T
    best = keys[np.argsort(-exact, axis=1)[:, :10]]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, best, strict=True)])
    assert overlap >= 0.9
    exact_found = np.take_along_axis(exact, np.searchsorted(keys, found), axis=1)
    error = np.abs(scores - exact_found)
    assert 1e-4 < error.max() < 0.05  # 8-bit codes: close, not float32's exact scores


class _HammingServer:
    """A stand-in for a Milvus server's BINARY_VECTOR collection (Milvus Lite has none):
    records the schema and index, keeps packed rows, searches by Hamming distance."""

    def __init__(self) -> None:
        self.rows: dict[int, bytes] = {}
        self.schema: object = None
        self.index: dict = {}

    def list_aliases(self) -> dict:
        return {"aliases": []}

    def has_collection(self, name: str) -> bool:
        return self.schema is not None

    def prepare_index_params(self) -> object:
        from pymilvus import MilvusClient

        return MilvusClient.prepare_index_params()

    def create_collection(self, name: str, *, schema: object, index_params: object) -> None:
        self.schema = schema
        (index,) = list(index_params)
        self.index = {"index_type": index.index_type, **index.get_index_configs()}

    def insert(self, name: str, rows: list[dict]) -> None:
        assert all(isinstance(row["vector"], bytes) for row in rows)
        self.rows.update({row["key"]: row["vector"] for row in rows})

    def search(self, name: str, *, data: list, limit: int, search_params: dict, **_: object):
        assert search_params["metric_type"] == "HAMMING"
        keys = np.array(sorted(self.rows))
        stored = np.unpackbits(np.frombuffer(b"".join(self.rows[k] for k in keys), np.uint8))
        stored = stored.reshape(len(keys), -1)
        found = []
        for query in data:
            bits = np.unpackbits(np.frombuffer(query, np.uint8))
            hamming = (stored != bits).sum(axis=1)
            order = np.argsort(hamming, kind="stable")[:limit]
            found.append([{"key": int(keys[i]), "distance": float(hamming[i])} for i in order])
        return found

    def flush(self, name: str) -> None: ...

    def load_collection(self, name: str) -> None: ...

    def close(self) -> None: ...


def test_binary_storage_on_a_server_searches_like_hamming_brute_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.parts.dense import milvus as milvus

    server = _HammingServer()
    monkeypatch.setattr(milvus, "_milvus_client", lambda uri: server)
    dim, keys = 20, np.arange(300)  # 20 dimensions: 24 bits, the last 4 zero
    documents, queries = _vectors(len(keys), dim, seed=3), _vectors(10, dim, seed=4)
    (tmp_path / "g").mkdir()
    backend = milvus.MilvusBackend.new(
        dim,
        tmp_path / "g",
        DenseSpec(
            backend="milvus",
            index_type="IVF4",
            milvus_uri="http://server",
            collection="b",
            storage="binary",
            binary_centre="zero",
        ),
    )
    (field,) = [f for f in server.schema.fields if f.name == "vector"]
    assert field.dtype.name == "BINARY_VECTOR" and field.params["dim"] == 24
    assert server.index == {
        "index_type": "BIN_IVF_FLAT",
        "metric_type": "HAMMING",
        "params": {"nlist": 4},
    }
    backend.add(keys, documents)
    description = backend.save(tmp_path / "g")
    assert description["storage"] == "binary" and description["binary_centre"] == "zero"

    scores, found = milvus.MilvusBackend.open(tmp_path / "g", description, dim).search(queries, 5)
    signs = np.packbits(documents > 0, axis=1)
    hamming = np.unpackbits(signs[None] ^ np.packbits(queries > 0, axis=1)[:, None], axis=2)
    similarity = 1 - 2 * hamming.sum(axis=2) / dim
    expected = -np.sort(-similarity, axis=1)[:, :5]
    np.testing.assert_allclose(scores, expected, atol=1e-6)  # scores, not keys: ties
    picked = np.take_along_axis(similarity, found, axis=1)
    np.testing.assert_allclose(picked, scores, atol=1e-6)


def test_int8_hnsw_on_a_server_is_hnsw_sq(milvus_server: str, tmp_path: Path) -> None:
    from retriever.core.generations import EXTERNAL_FILE
    from retriever.parts.dense.milvus import MilvusBackend, drop_external

    dim, keys = 16, np.arange(400)
    documents, queries = _vectors(len(keys), dim, seed=5), _vectors(10, dim, seed=6)
    (tmp_path / "g").mkdir()
    backend = MilvusBackend.new(
        dim,
        tmp_path / "g",
        DenseSpec(
            backend="milvus",
            index_type="HNSW16",
            milvus_uri=milvus_server,
            collection="sq",
            storage="int8",
        ),
    )
    try:
        backend.add(keys, documents)
        description = backend.save(tmp_path / "g")
        assert description["milvus_index"] == "HNSW_SQ" and description["storage"] == "int8"
        reopened = MilvusBackend.open(tmp_path / "g", description, dim)
        built = reopened.client.describe_index(description["collection"], "vector")
        assert built["index_type"] == "HNSW_SQ" and int(built["params"]["M"]) == 16
        reopened.set_search_params({"efSearch": 200})
        scores, found = reopened.search(queries, 5)
        reopened.close()
        exact = queries @ documents.T
        best = np.argsort(-exact, axis=1)[:, :5]
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, best, strict=True)])
        assert overlap >= 0.9
        picked = np.take_along_axis(exact, found, axis=1)
        # The server may still be building the index and scan the segment exactly.
        assert np.abs(scores - picked).max() < 0.05
    finally:
        drop_external(tmp_path / "g" / EXTERNAL_FILE)


def test_a_build_with_int8_storage_writes_an_int8_milvus_index(
    tiny_model: Path, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(40, seed=9))
    index = _build(
        tiny_model,
        corpus,
        tmp_path / "index",
        backend="milvus",
        storage="int8",
        index_type="IVF4",
    )
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dense"]["backend"]["storage"] == "int8"
    searcher = Searcher.load(index)
    assert len(searcher.search(QUERIES[0], k=5)) == 5
    searcher.close()
