"""Milvus (Lite) as the dense backend: the same answers as FAISS, add and delete too."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retriever import EncoderConfig, RetrieverError, Searcher, build_index
from retriever.cli import main
from tests.conftest import synthetic_docs, write_jsonl

pytest.importorskip(
    "pymilvus", reason="Milvus is an optional extra: pip install 'retriever[milvus]'"
)

QUERIES = [doc["text"] for doc in synthetic_docs(30, seed=7)]


def _build(model: Path, corpus: Path, out: Path, **kwargs) -> Path:
    return build_index(
        corpus,
        out,
        model=str(model),
        dtype="float32",
        encoder_config=EncoderConfig(max_length=64),
        **kwargs,
    )


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
    assert manifest["index"]["backend"] == {
        "backend": "milvus",
        "uri": "milvus.db",
        "collection": "retriever",
        "milvus_index": "FLAT",
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
    from retriever.milvus import milvus_index

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
    return json.loads((index / "manifest.json").read_text())["index"]["backend"]["collection"]


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
    described = json.loads((index / "manifest.json").read_text())["index"]["backend"]
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
    from retriever import indexing

    def fail(*args: object, **kwargs: object) -> None:
        raise RetrieverError("injected failure after the collection was filled")

    monkeypatch.setattr(indexing, "write_manifest", fail)
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
